#!/usr/bin/env python3
"""Summarises nmlx-vs-peer CPU runs (bench/compare_cpu_peer_all.sh,
bench/device_cpu_peer.sh) into the issue-9 table: per cell, medians of
prefill and decode tok/s of each engine, their ratios (nmlx / peer) and
the peak RSS of both.

Input: JSON lines {"cell": ..., "engine": "nmlx"|"peer", "pass": i,
"result": RAW} where RAW is one `nmlx bench` line, one bench_peer.mjs line
(pp512/tg128/peak_rss_mb), or {"llama_bench": [llama-bench jsonl records],
"peak_rss_mb": x}. Lines without "cell" ({"cpu": ...}, {"membw": ...}) are
echoed.

usage: cpu_peer_summary.py RESULTS.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys


def rates(raw):
    """(prefill tok/s, decode tok/s, peak RSS MB) of one engine run."""
    if "prefill_tok_s" in raw:  # nmlx bench
        return raw.get("prefill_tok_s"), raw.get("decode_tok_s"), raw.get("peak_rss_mb")
    if "pp512" in raw:  # bench_peer.mjs (node-llama-cpp)
        return raw.get("pp512"), raw.get("tg128"), raw.get("peak_rss_mb")
    if "llama_bench" in raw:  # llama-bench -o jsonl records
        pp = tg = None
        for r in raw["llama_bench"]:
            if r.get("n_gen", 0) == 0 and r.get("n_prompt", 0) > 0:
                pp = r["avg_ts"]
            elif r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
                tg = r["avg_ts"]
        return pp, tg, raw.get("peak_rss_mb")
    return None, None, None


def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def main():
    runs = {}
    order = []
    for path in sys.argv[1:]:
        for line in open(path):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "cell" not in r:  # cpu, membw ... lines
                print(json.dumps(r))
                continue
            key = (r["cell"], r.get("threads", 2))
            if key not in runs:
                runs[key] = {"nmlx": [], "peer": []}
                order.append(key)
            runs[key][r["engine"]].append(rates(r.get("result") or {}))
    print()
    print("| cell | threads | passes | prefill nmlx / peer tok/s | decode nmlx / peer tok/s "
          "| prefill ratio | decode ratio | peak RSS nmlx / peer MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in order:
        n, p = runs[key]["nmlx"], runs[key]["peer"]
        np_, nd, nr = (med([x[i] for x in n]) for i in range(3))
        pp, pd, pr = (med([x[i] for x in p]) for i in range(3))
        rp = np_ / pp if np_ and pp else None
        rd = nd / pd if nd and pd else None
        print(f"| {key[0]} | {key[1]} | {len(n)}/{len(p)} | {fmt(np_)} / {fmt(pp)} | "
              f"{fmt(nd)} / {fmt(pd)} | {fmt(rp, 2)}x | {fmt(rd, 2)}x | "
              f"{fmt(max([x[2] for x in n if x[2]], default=None), 0)} / "
              f"{fmt(max([x[2] for x in p if x[2]], default=None), 0)} |")


if __name__ == "__main__":
    main()
