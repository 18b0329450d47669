"""Sampler overhead: wall time of the stock KSampler with `dyweight` vs `euler` and `ipndm` at equal steps.

Runs the real ComfyUI sampling path on the tiny in-process SD15-family model of the test suite, so the
model call is cheap and any per-step cost of the sampler shows. Samplers are interleaved round by
round and the median is reported, as a ratio to euler measured in the same run (goal: ≤ 1.03).

    COMFYUI_PATH=/path/to/ComfyUI python bench/sampler_overhead.py [--steps 8] [--rounds 15] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import comfy_host  # noqa: E402  (the test suite's host finder and tiny models)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent is 1/8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    host = comfy_host.import_host()
    import comfyui_dyweight.nodes  # noqa: F401  registers `dyweight`

    samplers = ["euler", "dyweight"] + (["ipndm"] if host.has_ipndm else [])
    model = comfy_host.tiny_sd15_model(seed=0)
    positive, negative = comfy_host.tiny_sd15_conditioning(batch=args.batch, seed=0)
    latent = comfy_host.empty_latent(batch=args.batch, height=args.size, width=args.size)

    def run(name):
        start = time.perf_counter()
        comfy_host.sample_with_ksampler(model, positive, negative, latent, 0, args.steps, 5.0, name, "karras")
        return time.perf_counter() - start

    for name in samplers:  # warm-up: first-call allocations, preset cache
        run(name)
    times = {name: [] for name in samplers}
    for _ in range(args.rounds):
        for name in samplers:
            times[name].append(run(name))

    baseline = statistics.median(times["euler"])
    rows = [{"sampler": name, "median_s": statistics.median(t), "ratio_to_euler": statistics.median(t) / baseline}
            for name, t in times.items()]
    print(f"\nKSampler wall time, tiny SD15-family model, {args.steps} steps, batch {args.batch}, "
          f"{args.size}² px, median of {args.rounds} interleaved rounds, ComfyUI {host.version}\n")
    print("| sampler | median (s) | ratio to euler |\n| --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['sampler']} | {row['median_s']:.4f} | {row['ratio_to_euler']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "rounds": args.rounds, "size": args.size,
                                        "batch": args.batch, "host": f"ComfyUI {host.version}", "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
