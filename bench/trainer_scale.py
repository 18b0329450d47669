"""Trainer at scale: memory and time against the prompt count, the step against its floor, the teacher
against plain sampling, and 1 vs 2 ranks, on the tiny SD1.5 and tiny FLUX models.

    COMFYUI_PATH=/path/to/ComfyUI python bench/trainer_scale.py [--out bench/results] [--prompts 10 100 1000 2000]

Every figure comes from a fresh subprocess (one torch thread) that reads its peak resident set size
before (``setup``: imports, model, the prompts' encodings) and after the work (``peak``). The step,
its floor and the teacher are medians of repeated measurements in one process, in that process's CPU
time (one thread, so other jobs on shared cores do not count); the other times are wall times.

1. Prompt count (tiny SD1.5 and tiny FLUX models of the test suite, ``tests/comfy_host``, through
   ``host/training_target.py``): ``distill_for_comfy`` with 10 … 2,000 prompts and 40 teacher pairs
   (pairs take the prompts in turn; all prompts are encoded and handed to the trainer, as the command
   does), NFE 3, a few iterations. The encodings are the
   harness's random tensors in each model's shapes (77 × 32 SD1.5 tokens, 16 × 32 FLUX tokens), not a
   text encoder's, so the figures show what the trainer adds per prompt.
2. Step and floor, in one process: the floor of an optimisation step (batch 4, micro-batch 1) is
   NFE × (batch / micro-batch) guided model calls at the micro-batch with their backward pass to the
   input, each call the median of several, timed through the trainer's own denoiser and its
   differentiable model calls (``trainer/model_calls.py``; a plain backward pass is timed too where the
   model allows one: ComfyUI's FLUX blocks change saved tensors in place). The step is the median
   interval between the trainer's own per-iteration events of a real ``distill_for_comfy`` run (teacher
   pairs cached, no held-out check inside the measured iterations), with checkpointing (the ComfyUI
   default) and without.
3. Teacher: ms per pair of the trainer's teacher (ComfyUI's ``dpmpp_2m`` through the trainer's
   denoiser, one prompt per pair) against ``comfy.sample.sample_custom`` with the same sampler, steps
   and batch on one prompt (plain sampling), medians of three.
4. Ranks: the same ``distill_for_comfy`` run on one process and under ``torchrun --nproc-per-node 2``
   (gloo, CPU) on both tiny models: wall, teacher and optimisation seconds, and the largest difference
   between the two Φ.

Writes ``trainer_scale.md`` and ``trainer_scale.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"nfe": 3, "teacher": "dpmpp_2m", "teacher_steps": 6, "iterations": 4, "batch": 4, "pairs": 40}
MODELS = {"sd15": {"latent": [4, 8, 8], "cfg": 4.0}, "flux": {"latent": [16, 8, 8], "cfg": 1.0}}
REPEATS = 5  # timed model calls and optimisation steps per median
RANKS_RUN = {"pairs": 16, "iterations": 6}


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


def _quiet(event):
    """No progress bars in a child."""


def child_prompts(spec: dict) -> dict:
    adapter, target, encodings = _setup(spec["model"], spec["prompts"])
    setup = peak_mib()
    with tempfile.TemporaryDirectory() as cache:
        result = adapter.distill_for_comfy(
            target, cache_dir=cache, progress=_quiet, nfe=[SETTINGS["nfe"]], teacher=SETTINGS["teacher"],
            teacher_steps=SETTINGS["teacher_steps"], pairs=SETTINGS["pairs"], iterations=SETTINGS["iterations"],
            batch_size=SETTINGS["batch"], validation_every=SETTINGS["iterations"])
    return {"encodings_mib": encodings, "setup_mib": setup, "peak_mib": peak_mib(),
            "teacher_ms_per_pair": 1000 * result.timings["teacher_s"] / SETTINGS["pairs"],
            "optimisation_s": sum(result.timings["optimisation_s"].values())}


def _times_ms(work, repeats: int = REPEATS) -> list:
    """CPU milliseconds of this process for each of ``repeats`` calls of ``work()`` after one untimed warm-up
    call (one torch thread: the CPU time is the work's, whatever else the shared cores run meanwhile)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(1000 * (time.process_time() - start))
    return times


def child_step(spec: dict) -> dict:
    """The optimisation step against its floor, and the teacher against plain sampling, in one process and
    in its CPU time (the floor's model calls timed before and after the steps, one median of both)."""
    import torch

    batch, nfe = SETTINGS["batch"], SETTINGS["nfe"]
    adapter, target, _ = _setup(spec["model"], batch)  # a prompt per pair of the batch
    import comfy.sample  # the host is importable now
    import comfy.samplers

    from comfyui_dyweight.trainer.model_calls import differentiable_calls

    facts = target.facts()
    noise = adapter.comfy_noise(target, facts, 0)
    sigmas = adapter.comfy_sigmas(facts.model_sampling, target.schedule_name(), SETTINGS["teacher_steps"])
    x = torch.cat([noise(index) for index in range(batch)])
    adapter.make_weights_differentiable(target.model.model)
    samples = {"grad_call_ms": [], "plain_grad_call_ms": []}

    def grad_calls(denoise, inner_model):
        def call(latent, sigma):
            return denoise(latent, sigma, condition=torch.zeros(latent.shape[0], dtype=torch.int64))

        def grad_call(model_call):
            one = x[:1].clone().requires_grad_(True)
            return lambda: torch.autograd.grad(model_call(one, sigmas[1]).square().mean(), one)

        samples["grad_call_ms"] += _times_ms(grad_call(differentiable_calls(call, False)))
        try:
            samples["plain_grad_call_ms"] += _times_ms(grad_call(call))
        except RuntimeError as error:  # a model that changes saved tensors in place has no plain backward
            samples["plain_grad_call_error"] = str(error).split(":")[0]
        teacher = adapter.comfy_sampler(SETTINGS["teacher"], inner_model)
        return call, teacher

    call, teacher = adapter.with_comfy_denoisers(target, grad_calls)
    figures = {"teacher_ms_per_pair": statistics.median(_times_ms(lambda: adapter.with_comfy_denoisers(
        target, lambda denoise, inner_model: teacher(call, x, sigmas)), 3)) / batch}
    positive, negative = target.conditionings[0]
    unit = x / facts.sigma_max
    figures["plain_ms_per_image"] = statistics.median(_times_ms(lambda: comfy.sample.sample_custom(
        target.model, unit, target.cfg, comfy.samplers.sampler_object(SETTINGS["teacher"]), sigmas, positive,
        negative, torch.zeros_like(unit), disable_pbar=True), 3)) / batch
    with tempfile.TemporaryDirectory() as cache:
        settings = dict(nfe=[nfe], teacher=SETTINGS["teacher"], teacher_steps=SETTINGS["teacher_steps"], pairs=8,
                        batch_size=batch, micro_batch_size=1, validation_every=1000)
        adapter.distill_for_comfy(target, cache_dir=cache, progress=_quiet, iterations=0, **settings)
        for checkpointing in (True, False):
            events = []

            def timed(event):
                if event["kind"] == "train":
                    events.append(time.process_time())

            # iterations 2 … REPEATS + 1 are steps alone (the first starts the run, the last is checked)
            adapter.distill_for_comfy(target, cache_dir=cache, progress=timed, iterations=REPEATS + 2,
                                      checkpointing=checkpointing, **settings)
            steps = [1000 * (later - earlier) for earlier, later in zip(events, events[1:])][:REPEATS]
            figures["step_ms" if checkpointing else "step_no_checkpointing_ms"] = statistics.median(steps)
    adapter.with_comfy_denoisers(target, grad_calls)
    for key, times in samples.items():
        if isinstance(times, list) and times:
            figures[key] = statistics.median(times)
        elif not isinstance(times, list):
            figures[key] = times
    figures["step_floor_ms"] = figures["grad_call_ms"] * nfe * batch  # micro-batch 1
    return figures


def child_ranks(spec: dict) -> dict:
    """One ``distill_for_comfy`` run (on as many ranks as torchrun started); rank 0 reports."""
    from comfyui_dyweight.trainer import distributed

    adapter, target, _ = _setup(spec["model"], SETTINGS["batch"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        result = adapter.distill_for_comfy(
            target, cache_dir=cache, progress=_quiet, nfe=[SETTINGS["nfe"]], teacher=SETTINGS["teacher"],
            teacher_steps=SETTINGS["teacher_steps"], batch_size=SETTINGS["batch"], micro_batch_size=1,
            validation_every=RANKS_RUN["iterations"], **RANKS_RUN)
    phi = result.coefficients[SETTINGS["nfe"]]
    return {"rank": distributed.ranks().rank, "seconds": time.perf_counter() - start,
            "teacher_s": result.timings["teacher_s"], "optimisation_s": sum(result.timings["optimisation_s"].values()),
            "weights": phi.weights.tolist(), "time_scale": phi.time_scale.tolist()}


CHILDREN = {"prompts": child_prompts, "step": child_step, "ranks": child_ranks}


def run_child(spec: dict, ranks: int = 1) -> dict:
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    completed = subprocess.run([sys.executable, *launcher, __file__, "--child", json.dumps(spec)], capture_output=True,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    results = [json.loads(line[len("RESULT "):]) for line in completed.stdout.splitlines()
               if line.startswith("RESULT ")]
    results = [result for result in results if result.get("rank", 0) == 0]
    if completed.returncode != 0 or not results:
        return {**spec, "error": (completed.stderr or completed.stdout)[-600:]}
    return {**spec, **results[-1]}


def ranks_part(models) -> list:
    rows = []
    for model in models:
        one, two = (run_child({"kind": "ranks", "model": model}, ranks) for ranks in (1, 2))
        if "error" not in one and "error" not in two:
            import torch

            two["phi_difference"] = max(float((torch.tensor(one[key]) - torch.tensor(two[key])).abs().max())
                                        for key in ("weights", "time_scale"))
        rows += [{"ranks": ranks, **row} for ranks, row in ((1, one), (2, two))]
        print(rows[-2:], flush=True)
    return rows


def _table_rows(rows: list, keys: tuple, figures) -> list:
    """Markdown rows: the ``keys`` columns, then ``figures(row)``, or the end of a failed child's error."""
    return ["| " + " | ".join([str(row[key]) for key in keys]
                              + ([f"failed: {row['error'][-120:]!r}"] if "error" in row else figures(row))) + " |"
            for row in rows]


def _step_figures(row: dict) -> list:
    """The step row: each step's ratio to the floor of the trainer's model calls, and to the floor of plain
    backward passes where the model has them."""
    plain = row.get("plain_grad_call_ms")

    def ratio(step):
        against_plain = f" ({step / (plain * row['step_floor_ms'] / row['grad_call_ms']):.2f}× plain)" if plain else ""
        return f"**{step / row['step_floor_ms']:.2f}×**{against_plain}"

    return [f"{plain:.1f}" if plain else f"fails ({row.get('plain_grad_call_error', '?')[:40]}…)",
            f"{row['grad_call_ms']:.1f}", f"{row['step_floor_ms']:.0f}", f"{row['step_ms']:.0f}", ratio(row["step_ms"]),
            f"{row['step_no_checkpointing_ms']:.0f}", ratio(row["step_no_checkpointing_ms"]),
            f"{row['teacher_ms_per_pair']:.1f}", f"{row['plain_ms_per_image']:.1f}",
            f"**{row['teacher_ms_per_pair'] / row['plain_ms_per_image']:.2f}×**"]


def markdown(document: dict) -> str:
    lines = ["# Trainer at scale (bench/trainer_scale.py)", "", f"Measured on {document['machine']}.", "",
             "**Prompt count** (40 pairs taking the prompts in turn, NFE 3, teacher `dpmpp_2m` × 6, 4 iterations, "
             "batch 4; wall times on shared cores):", "",
             "| model | prompts | encodings MiB | setup MiB | peak MiB | work MiB | teacher ms/pair | optimisation s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += _table_rows(document["prompts"], ("model", "prompts"), lambda row: [
        f"{row['encodings_mib']:.1f}", f"{row['setup_mib']:.0f}", f"{row['peak_mib']:.0f}",
        f"{row['peak_mib'] - row['setup_mib']:.0f}", f"{row['teacher_ms_per_pair']:.1f}", f"{row['optimisation_s']:.2f}"])
    lines += ["", f"**Step against its floor; teacher against plain sampling** (medians of {REPEATS} in one process, "
                  "CPU ms; "
                  "batch 4, micro-batch 1, NFE 3; the floor is NFE × 4 guided calls at batch 1 with their backward "
                  "pass, through the trainer's differentiable model calls; the plain backward pass is shown where "
                  "the model allows one):", "",
              "| model | plain grad call ms | grad call ms | step floor ms | step ms (checkpointing) | / floor "
              "| step ms (no checkpointing) | / floor | teacher ms/pair | plain sampling ms/image | teacher / plain |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += _table_rows(document["step"], ("model",), _step_figures)
    lines += ["", "**Ranks** (the same run on 1 process and on 2 under torchrun, CPU, gloo: "
                  f"{RANKS_RUN['pairs']} pairs, "
                  f"{RANKS_RUN['iterations']} iterations, batch 4, micro-batch 1, checkpointing):", "",
              "| model | ranks | wall s | teacher s | optimisation s | max Φ difference to 1 rank |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += _table_rows(document["ranks"], ("model", "ranks"), lambda row: [
        f"{row['seconds']:.1f}", f"{row['teacher_s']:.1f}", f"{row['optimisation_s']:.1f}",
        f"{row['phi_difference']:.1e}" if "phi_difference" in row else "—"])
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
        print("RESULT " + json.dumps(CHILDREN[spec["kind"]](spec)), flush=True)
        return 0
    import torch
    from comfyui_dyweight.atomic import write_text_atomic

    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_host

    document = {"machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                           f"{time.strftime('%Y-%m-%d')}, ComfyUI {comfy_host.import_host().version}",
                "settings": SETTINGS, "prompts": [], "step": []}
    for model in arguments.models:
        document["step"].append(run_child({"kind": "step", "model": model}))
        print(document["step"][-1], flush=True)
        for prompts in arguments.prompts:
            document["prompts"].append(run_child({"kind": "prompts", "model": model, "prompts": prompts}))
            print(document["prompts"][-1], flush=True)
    document["ranks"] = ranks_part(arguments.models)
    write_text_atomic(arguments.out / "trainer_scale.json", json.dumps(document, indent=1) + "\n")
    write_text_atomic(arguments.out / "trainer_scale.md", markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
