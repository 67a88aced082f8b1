#!/usr/bin/env python3
"""The table of a device_run.sh run: nmlx bench lines ($OUT/bench.jsonl)
against llama.cpp's figures for the same shapes on an H200 (issue 10's
table, measured by ../shared/bench/gpu-peer in an earlier run: ratios are
indicative, not same-run).

    python3 bench/cuda/summarize.py OUT/bench.jsonl
"""
import json
import sys

# (shape, format) -> (llama.cpp pp512, tg128), H200, issue 10
LLAMA_CPP = {
    ("l1b", "bf16"): (60599, 779),
    ("l8b", "bf16"): (22638, 208),
    ("l1b", "q4"): (39410, 962),
    ("l8b", "q4"): (10539, 332),
    ("l8b", "q8"): (10804, 255),
}
# issue 10's decode goals, as multiples of llama.cpp
GOAL = {("l8b", "q4"): 1.3, ("l1b", "q4"): 1.5, ("l1b", "bf16"): 1.1, ("l8b", "bf16"): 1.1,
        ("l8b", "q8"): 1.2}


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    print(f"| run | pp512 tok/s | tg128 tok/s | pp vs llama.cpp | tg vs llama.cpp (goal) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        name = r.get("bench", "?")
        model = name.split()[0]
        shape, fmt = model.split("-", 1) if "-" in model else (model, "")
        ref = LLAMA_CPP.get((shape, fmt))
        pp, tg = r.get("prefill_tok_s", 0), r.get("decode_tok_s", 0)
        rp = f"{pp / ref[0]:.2f}x" if ref else "-"
        rt = f"{tg / ref[1]:.2f}x" if ref else "-"
        goal = GOAL.get((shape, fmt))
        print(f"| {name} | {pp:,.0f} | {tg:,.1f} | {rp} | {rt}{f' ({goal}x)' if goal else ''} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nmlx-cuda-out/bench.jsonl")
