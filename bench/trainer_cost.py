"""Trainer cost: teacher and optimisation time and peak memory vs NFE and pairs, and the memory bar.

    COMFYUI_PATH=/path/to/ComfyUI python bench/trainer_cost.py [--out bench/results] [--iterations 40]

Every figure comes from a **fresh subprocess** that sets up, reads its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's high-water mark of the whole process:
torch's allocations included, which ``tracemalloc`` does not see), does one piece of work, and reads
the peak again. ``setup`` is the peak before the work (imports, model), ``peak`` the peak after it,
and ``work`` their difference: what the work itself needed on top of the process.

1. Demo model (the digits EDM model of ``bash demo/run``, one torch thread):
   * the teacher (Heun, 64 steps) for 64 and 256 pairs;
   * the optimisation of one NFE (3, 5, 7, 9) from 256 cached pairs, batch 32, ``--iterations`` steps
     (seconds per iteration include the trainer's held-out checks), without and with per-call gradient
     checkpointing, and at NFE 5 from 64 pairs.
2. The trainer's memory bar on the tiny SD15-family ComfyUI model of the test suite (``tests/comfy_host``),
   through ``host/training_target.py``: the peak while training NFE 5 with checkpointing and the
   adapter's default micro-batches (``distill_for_comfy``, teacher pairs already cached) against one
   teacher sampling call of the same batch (ComfyUI's ``dpmpp_2m``, 35 steps, through the same guided
   denoiser). Bar: ≤ 1.5×. For scale: training with the whole batch in one backward pass, and one
   model call with its backward pass at the batch and at one latent (the floor of each).
   Skipped, with the reason printed, when no ComfyUI host imports.

Writes ``trainer_cost.md``, ``trainer_cost.json`` and ``trainer_cost.png`` (needs matplotlib) to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMORY_BAR = 1.5
#: The SD15 measurement: latent 4×32×32 (256² px), CFG 5 (cond + uncond: the model sees twice the batch).
COMFY = {"batch": 4, "latent": [4, 32, 32], "cfg": 5.0, "teacher": "dpmpp_2m", "teacher_steps": 35, "nfe": 5,
         "iterations": 3}


def peak_mib() -> float:
    """The process's peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- children: each runs in its own process -------------------------------------------------------
def child_demo_teacher(spec: dict) -> dict:
    import torch
    from comfyui_dyweight.demo import pipeline

    torch.set_num_threads(1)
    model = pipeline.demo_model()
    settings = pipeline.FULL.replace(pairs=spec["pairs"])
    setup = peak_mib()
    start = time.perf_counter()
    run = pipeline.teacher_set(model, settings, Path(spec["cache_dir"]), "train")
    seconds = time.perf_counter() - start
    assert not run.cache_hit, "the teacher measurement needs an empty cache"
    return {"seconds": seconds, "setup_mib": setup, "peak_mib": peak_mib()}


def child_demo_train(spec: dict) -> dict:
    import torch
    from comfyui_dyweight.demo import pipeline

    torch.set_num_threads(1)
    model = pipeline.demo_model()
    settings = pipeline.FULL.replace(pairs=spec["pairs"], nfe=(spec["nfe"],), iterations=spec["iterations"],
                                     checkpointing=spec["checkpointing"])
    setup = peak_mib()
    start = time.perf_counter()
    result = pipeline.distil(model, settings, Path(spec["cache_dir"]), progress=lambda event: None)
    seconds = time.perf_counter() - start
    assert result.timings["teacher_cache_hit"], "the optimisation measurement expects cached pairs"
    optimisation = result.timings["optimisation_s"][spec["nfe"]]
    return {"seconds": seconds, "optimisation_s": optimisation, "s_per_iteration": optimisation / spec["iterations"],
            "setup_mib": setup, "peak_mib": peak_mib()}


def _comfy_setup():
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_host

    host = comfy_host.import_host()
    from comfyui_dyweight.host import training_target as adapter

    model = comfy_host.tiny_sd15_model(seed=0)
    conditioning = comfy_host.tiny_sd15_conditioning(batch=1, seed=1)
    target = adapter.ComfyTarget(model, [conditioning], cfg=COMFY["cfg"], latent_shape=tuple(COMFY["latent"]))
    return host, adapter, target


def child_comfy_pairs(spec: dict) -> dict:
    """Fill the cache for the training measurement (not measured itself)."""
    import torch

    torch.set_num_threads(1)
    _, adapter, target = _comfy_setup()
    result = adapter.distill_for_comfy(
        target, cache_dir=spec["cache_dir"], progress=lambda event: None, nfe=[COMFY["nfe"]], teacher=COMFY["teacher"],
        teacher_steps=COMFY["teacher_steps"], pairs=spec["pairs"], iterations=0, batch_size=COMFY["batch"],
        sampling_batch_size=COMFY["batch"])
    return {"cache_hit": result.timings["teacher_cache_hit"]}


def _comfy_measurement(batch: int, work) -> dict:
    """``work(adapter, denoise, inner_model, x, sigmas)`` on ``batch`` latents of noise through the
    trainer's own guided denoiser; its seconds and the process's peak before and after (one thread)."""
    import torch

    torch.set_num_threads(1)
    host, adapter, target = _comfy_setup()
    setup = peak_mib()
    facts = target.facts()
    noise = adapter.comfy_noise(target, facts, 0)

    def body(denoise, inner_model):
        x = torch.cat([noise(index) for index in range(batch)])
        sigmas = adapter.comfy_sigmas(facts.model_sampling, target.schedule_name(), COMFY["teacher_steps"])
        labelled = functools.partial(denoise, condition=torch.zeros(x.shape[0], dtype=torch.int64))
        start = time.perf_counter()
        work(adapter, labelled, inner_model, x, sigmas)
        return time.perf_counter() - start

    seconds = adapter.with_comfy_denoisers(target, body)
    return {"seconds": seconds, "setup_mib": setup, "peak_mib": peak_mib(), "host": f"ComfyUI {host.version}"}


def child_comfy_teacher(spec: dict) -> dict:
    """One teacher sampling call on a batch (ComfyUI's sampler through the trainer's wrapper)."""
    def work(adapter, denoise, inner_model, x, sigmas):
        assert adapter.comfy_sampler(COMFY["teacher"], inner_model)(denoise, x, sigmas).isfinite().all()

    return _comfy_measurement(spec["batch"], work)


def child_comfy_grad_call(spec: dict) -> dict:
    """One model call on a batch with its backward pass to the input, as the student's are: the least
    memory that per-call checkpointing can reach at that batch, since the backward needs its activations."""
    import torch

    def work(adapter, denoise, inner_model, x, sigmas):
        x = x.requires_grad_(True)
        torch.autograd.grad(denoise(x, sigmas[1]).square().mean(), x)

    return _comfy_measurement(spec["batch"], work)


def child_comfy_train(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    _, adapter, target = _comfy_setup()
    setup = peak_mib()
    start = time.perf_counter()
    result = adapter.distill_for_comfy(
        target, cache_dir=spec["cache_dir"], progress=lambda event: None, nfe=[COMFY["nfe"]], teacher=COMFY["teacher"],
        teacher_steps=COMFY["teacher_steps"], pairs=spec["pairs"], iterations=COMFY["iterations"],
        batch_size=COMFY["batch"], sampling_batch_size=COMFY["batch"], micro_batch_size=spec["micro_batch_size"])
    seconds = time.perf_counter() - start
    assert result.timings["teacher_cache_hit"], "the training measurement expects cached pairs"
    return {"seconds": seconds, "optimisation_s": result.timings["optimisation_s"][COMFY["nfe"]],
            "micro_batch_size": spec["micro_batch_size"] or adapter.COMFY_DEFAULTS["micro_batch_size"],
            "setup_mib": setup, "peak_mib": peak_mib()}


CHILDREN = {"demo_teacher": child_demo_teacher, "demo_train": child_demo_train, "comfy_pairs": child_comfy_pairs,
            "comfy_teacher": child_comfy_teacher, "comfy_grad_call": child_comfy_grad_call,
            "comfy_train": child_comfy_train}


def run_child(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; returns its figures (``work_mib`` added)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                               text=True, env=environment, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {spec} failed (exit {completed.returncode}):\n"
                           f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    figures = json.loads(lines[-1][len("RESULT "):])
    if "peak_mib" in figures:
        figures["work_mib"] = figures["peak_mib"] - figures["setup_mib"]
    return {**spec, **figures}


# --- the parent ----------------------------------------------------------------------------------
def demo_part(cache: Path, iterations: int) -> dict:
    teacher = []
    for pairs in (64, 256):
        teacher.append(run_child({"kind": "demo_teacher", "pairs": pairs, "cache_dir": str(cache)}))
        print(f"demo teacher, {pairs} pairs: {teacher[-1]['seconds']:.1f} s, work {teacher[-1]['work_mib']:.0f} MiB",
              flush=True)
    train = []
    plan = [(nfe, 256, False) for nfe in (3, 5, 7, 9)] + [(nfe, 256, True) for nfe in (5, 9)] + [(5, 64, False)]
    for nfe, pairs, checkpointing in plan:
        train.append(run_child({"kind": "demo_train", "nfe": nfe, "pairs": pairs, "iterations": iterations,
                                "checkpointing": checkpointing, "cache_dir": str(cache)}))
        print(f"demo optimisation, NFE {nfe}, {pairs} pairs, checkpointing {checkpointing}: "
              f"{train[-1]['s_per_iteration'] * 1e3:.0f} ms/iteration, work {train[-1]['work_mib']:.0f} MiB", flush=True)
    return {"teacher": teacher, "train": train}


def comfy_part(cache: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_host

    try:
        where = comfy_host.find_comfyui()
    except RuntimeError as error:
        where, reason = None, str(error)
    else:
        reason = comfy_host.NO_HOST_REASON
    if where is None:
        print(f"SKIPPED the SD15 memory bar: {reason}")
        return {"skipped": reason}
    pairs, batch = 2 * COMFY["batch"], COMFY["batch"]  # 20% held out leaves > one batch to train on
    try:
        run_child({"kind": "comfy_pairs", "pairs": pairs, "cache_dir": str(cache)})
        teacher = run_child({"kind": "comfy_teacher", "batch": batch})
        grad_calls = [run_child({"kind": "comfy_grad_call", "batch": size}) for size in (batch, 1)]
        # micro-batch None: the adapter's default (COMFY_DEFAULTS); the whole batch at once for scale
        train, whole_batch = (run_child({"kind": "comfy_train", "pairs": pairs, "cache_dir": str(cache),
                                         "micro_batch_size": micro}) for micro in (None, batch))
    except RuntimeError as error:
        if "import" in str(error).lower() and "host" in str(error).lower():
            print(f"SKIPPED the SD15 memory bar: the host at {where} does not import ({error})")
            return {"skipped": f"host at {where} does not import"}
        raise
    ratio_peak = train["peak_mib"] / teacher["peak_mib"]
    ratio_work = train["work_mib"] / teacher["work_mib"]
    print(f"SD15 memory bar: training NFE {COMFY['nfe']} peak {train['peak_mib']:.0f} MiB (work "
          f"{train['work_mib']:.0f}) vs one teacher call {teacher['peak_mib']:.0f} MiB (work {teacher['work_mib']:.0f}): "
          f"{ratio_peak:.2f}× of the peak, {ratio_work:.2f}× of the work", flush=True)
    return {"settings": COMFY, "host": teacher.get("host"), "teacher": teacher, "grad_calls": grad_calls,
            "train": train, "train_whole_batch": whole_batch, "default_micro_batch_size": train["micro_batch_size"],
            "ratio_whole_batch_work": whole_batch["work_mib"] / teacher["work_mib"],
            "ratio_peak": ratio_peak, "ratio_work": ratio_work, "bar": MEMORY_BAR, "met": ratio_work <= MEMORY_BAR}


def markdown(document: dict) -> str:
    demo = document["demo"]
    lines = ["Fresh process per figure; memory = peak RSS (ru_maxrss). *setup*: the process before the work "
             "(Python, torch, model); *work*: the peak's increase over it. One torch thread.", "",
             "**Demo model — teacher** (Heun, 64 steps = 128 model calls per pair, batch 128):", "",
             "| pairs | seconds | ms per pair | setup MiB | peak MiB | work MiB |", "|---:|---:|---:|---:|---:|---:|"]
    for row in demo["teacher"]:
        lines.append(f"| {row['pairs']} | {row['seconds']:.1f} | {row['seconds'] / row['pairs'] * 1e3:.0f} | "
                     f"{row['setup_mib']:.0f} | {row['peak_mib']:.0f} | {row['work_mib']:.0f} |")
    lines += ["", f"**Demo model — optimisation** (batch 32, {demo['train'][0]['iterations']} iterations, "
              f"AFS, K = 3; time per iteration includes the held-out checks):", "",
              "| NFE | pairs | checkpointing | ms / iteration | setup MiB | peak MiB | work MiB |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    for row in demo["train"]:
        lines.append(f"| {row['nfe']} | {row['pairs']} | {'yes' if row['checkpointing'] else 'no'} | "
                     f"{row['s_per_iteration'] * 1e3:.0f} | {row['setup_mib']:.0f} | {row['peak_mib']:.0f} | "
                     f"{row['work_mib']:.0f} |")
    comfy = document["comfy"]
    lines += ["", "**Memory bar — tiny SD15-family ComfyUI model** (training NFE 5 with checkpointing vs one "
              f"teacher sampling call of the same batch; bar ≤ {MEMORY_BAR}×):", ""]
    if "skipped" in comfy:
        lines.append(f"Skipped: {comfy['skipped']}.")
    else:
        s = comfy["settings"]
        lines += [f"Batch {s['batch']}, latent {'×'.join(map(str, s['latent']))}, CFG {s['cfg']:g}, teacher "
                  f"ComfyUI `{s['teacher']}` × {s['teacher_steps']} steps, training {s['iterations']} iterations "
                  f"(plus the trainer's held-out checks); host {comfy['host']}.", "",
                  "| process | batch | seconds | setup MiB | peak MiB | work MiB |", "|---|---:|---:|---:|---:|---:|"]
        micro = comfy["default_micro_batch_size"]
        rows = [("one teacher sampling call", s["batch"], comfy["teacher"])]
        rows += [("one model call + its backward (no sampler)", row["batch"], row) for row in comfy["grad_calls"]]
        rows += [(f"training NFE {s['nfe']}, checkpointing, the whole batch per backward", s["batch"],
                  comfy["train_whole_batch"]),
                 (f"training NFE {s['nfe']}, checkpointing, micro-batches of {micro} (the ComfyUI default)",
                  s["batch"], comfy["train"])]
        for name, size, row in rows:
            lines.append(f"| {name} | {size} | {row['seconds']:.1f} | {row['setup_mib']:.0f} | "
                         f"{row['peak_mib']:.0f} | {row['work_mib']:.0f} |")
        lines += ["", f"Training / teacher with the default micro-batches: **{comfy['ratio_work']:.2f}×** of the work, "
                  f"{comfy['ratio_peak']:.2f}× of the whole peak — bar ≤ {MEMORY_BAR}× (on the work, the stricter "
                  f"reading): **{'met' if comfy['met'] else 'NOT met'}**. With the whole batch in one backward pass "
                  f"it is {comfy['ratio_whole_batch_work']:.2f}×: the backward of one model call needs its "
                  f"activations, so the batch it runs on, not the NFE (checkpointing), sets the peak."]
    return "\n".join(lines) + "\n"


def plot(document: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from comfyui_dyweight.demo.figures import save_figure
    except ImportError:
        print(f"(matplotlib is not installed: skipped {path})")
        return False
    rows = [row for row in document["demo"]["train"] if row["pairs"] == 256]
    figure, axes = plt.subplots(1, 2, figsize=(8, 3))
    for checkpointing, style in ((False, "o-"), (True, "s--")):
        chosen = sorted((row for row in rows if row["checkpointing"] == checkpointing), key=lambda row: row["nfe"])
        label = "with checkpointing" if checkpointing else "no checkpointing"
        axes[0].plot([r["nfe"] for r in chosen], [r["s_per_iteration"] * 1e3 for r in chosen], style, label=label)
        axes[1].plot([r["nfe"] for r in chosen], [r["work_mib"] for r in chosen], style, label=label)
    axes[0].set(xlabel="NFE", ylabel="ms per iteration", title="optimisation time")
    axes[1].set(xlabel="NFE", ylabel="MiB over setup", title="optimisation peak memory")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Demo model, batch 32, one thread", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=72)
    plt.close(figure)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--iterations", type=int, default=200,
                        help="optimisation iterations per measurement (default 200, as the demo: the trainer's "
                             "held-out check every iterations/20 is part of the time per iteration)")
    parser.add_argument("--skip-comfy", action="store_true", help="skip the SD15 memory bar")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        spec = json.loads(arguments.child)
        print("RESULT " + json.dumps(CHILDREN[spec["kind"]](spec)), flush=True)
        return 0

    from comfyui_dyweight.atomic import write_text_atomic
    from comfyui_dyweight.demo import pipeline

    with tempfile.TemporaryDirectory(prefix="dyweight-trainer-cost-") as scratch:
        demo = demo_part(Path(scratch) / "demo", arguments.iterations)
        comfy = {"skipped": "--skip-comfy"} if arguments.skip_comfy else comfy_part(Path(scratch) / "comfy")
    document = {"what": "trainer time and peak memory; see bench/trainer_cost.py", "machine": pipeline.machine(),
                "demo": demo, "comfy": comfy}
    table = markdown(document)
    print("\n" + table)
    machine = document["machine"]
    write_text_atomic(arguments.out / "trainer_cost.md",
                      "# Trainer cost (bench/trainer_cost.py)\n\n"
                      f"Measured on {machine['platform']}, {machine['cpu_count']} CPU cores (shared), torch "
                      f"{machine['torch']}, {machine['date']}.\n\n" + table)
    write_text_atomic(arguments.out / "trainer_cost.json", json.dumps(document, indent=1) + "\n")
    plot(document, arguments.out / "trainer_cost.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
