"""Per-kernel GPU time from an `ncu --metrics gpu__time_duration.sum --csv`
log: kernels grouped by name (template arguments kept), calls, total and
mean microseconds, share, largest first.
usage: python3 kernel_sum.py NCU_CSV"""
import csv
import sys
from collections import defaultdict

rows = []
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
tot = defaultdict(float)
calls = defaultdict(int)
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    v = float(r["Metric Value"].replace(",", ""))
    if r.get("Metric Unit") in ("nsecond", "ns"):
        v /= 1000.0
    elif r.get("Metric Unit") in ("msecond", "ms"):
        v *= 1000.0
    name = r["Kernel Name"][:110]
    tot[name] += v
    calls[name] += 1
total = sum(tot.values()) or 1.0
print(f"{'kernel':110s} {'calls':>6s} {'total us':>10s} {'mean us':>9s} {'share':>6s}")
for name, us in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{name:110s} {calls[name]:6d} {us:10.1f} {us / calls[name]:9.1f} {100 * us / total:5.1f}%")
print(f"total {total / 1000.0:.2f} ms over {sum(calls.values())} kernels")
