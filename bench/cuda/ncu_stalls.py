"""Where each kernel's warps wait: from `ncu --section SpeedOfLight --section
Occupancy --section WarpStateStats --section LaunchStats --page raw --csv`,
one block per launch: duration, grid, registers, achieved occupancy, DRAM
throughput, and the stall reasons that take the most cycles per issued
instruction (largest first). Metric names are matched loosely, so the
script survives ncu versions that rename a metric.
usage: python3 ncu_stalls.py NCU_RAW_CSV [TOP=6]"""
import csv
import sys

top = int(sys.argv[2]) if len(sys.argv) > 2 else 6
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
rows = list(csv.reader(lines))
if len(rows) < 2:
    sys.exit("no launches in " + sys.argv[1])
head = rows[0]
col = {n: i for i, n in enumerate(head)}


def val(r, i):
    try:
        return float(r[i].replace(",", ""))
    except (ValueError, IndexError):
        return None


def first(r, *subs):
    for n, i in col.items():
        if all(s in n for s in subs):
            v = val(r, i)
            if v is not None:
                return v
    return None


# rows[1] may be the units row
data = [r for r in rows[1:] if r and r[0] and r[0][0].isdigit()]
for r in data:
    name = r[col.get("Kernel Name", 0)][:100]
    dur = first(r, "gpu__time_duration.sum")
    regs = first(r, "launch__registers_per_thread")
    grid = first(r, "launch__grid_size")
    block = first(r, "launch__block_size")
    occ = first(r, "sm__warps_active.avg.pct_of_peak_sustained_active")
    dram = first(r, "dram__throughput.avg.pct_of_peak_sustained_elapsed")
    cpi = first(r, "smsp__average_warp_latency_per_inst_issued")
    print(f"== {name}")
    print(f"   {dur} ns  grid {grid} x {block}  regs {regs}  occupancy {occ}%  dram {dram}%  "
          f"cycles/issue {cpi}")
    st = []
    for n, i in col.items():
        if "issue_stalled" in n and n.endswith(".ratio") and "not_issued" not in n:
            v = val(r, i)
            if v:
                st.append((v, n.replace("smsp__average_warp_latency_issue_stalled_", "")
                           .replace("smsp__average_warps_issue_stalled_", "")))
    st.sort(reverse=True)
    print("   stalls (cycles per issue): " + ", ".join(f"{n} {v:.1f}" for v, n in st[:top]))
