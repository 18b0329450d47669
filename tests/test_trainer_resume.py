"""Interrupting and resuming a distillation: bit-identical results, atomic files, refused mismatches."""

import json

import pytest
import torch
from safetensors import safe_open

from comfyui_dyweight.coefficients import edm_sigmas
from comfyui_dyweight.trainer import DistillConfig, ModelSource, TrainingInterrupted, distill
from comfyui_dyweight.trainer.analytic import GaussianMixture
from comfyui_dyweight.trainer.teachers import sample_heun

SETTINGS = DistillConfig(nfe=[3, 4], teacher_steps=16, iterations=60, batch_size=8, validation_every=20,
                         sampling_batch_size=8)



def karras(steps):
    return edm_sigmas(steps, 0.002, 80.0, 7.0, to_zero=True)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.seeded(dim=4, components=3, std=0.5, seed=1)


@pytest.fixture(scope="module")
def noise(mixture):
    return 80.0 * torch.randn(40, mixture.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def run(mixture, noise, state_dir, progress=lambda event: None, denoise=None, **overrides):
    resume = overrides.pop("resume", False)
    return distill(ModelSource(denoise or mixture.denoise, noise, karras), SETTINGS.with_given(**overrides),
                   state_dir=state_dir, resume=resume, progress=progress)


@pytest.fixture(scope="module")
def uninterrupted(mixture, noise, tmp_path_factory):
    return run(mixture, noise, tmp_path_factory.mktemp("uninterrupted"))


def interrupt_when(condition, exception=TrainingInterrupted):
    def progress(event):
        if condition(event):
            raise exception()
    return progress


def assert_same_result(resumed, reference):
    assert list(resumed.coefficients) == list(reference.coefficients)
    for nfe, phi in reference.coefficients.items():
        assert torch.equal(resumed.coefficients[nfe].weights, phi.weights), nfe
        assert torch.equal(resumed.coefficients[nfe].time_scale, phi.time_scale), nfe
    assert resumed.history == reference.history

    def timeless(row):
        return {key: timeless(value) if key == "families" else value for key, value in row.items()
                if key != "optimisation_s"} if "nfe" in row else {name: timeless(value) for name, value in row.items()}

    def figures(table):
        return [timeless(row) for row in table]

    assert figures(resumed.table) == figures(reference.table)


def files_left(folder):
    return sorted(path.name for path in folder.iterdir())


def test_resume_after_interruption_is_bit_identical(mixture, noise, uninterrupted, tmp_path):
    in_nfe_4 = interrupt_when(lambda e: e["kind"] == "train" and e["nfe"] == 4 and e["iteration"] == 25)
    with pytest.raises(TrainingInterrupted, match="resume=True") as caught:
        run(mixture, noise, tmp_path, in_nfe_4)
    partial = caught.value.result
    assert set(partial.coefficients) == {3, 4} and [row["nfe"] for row in partial.table] == [3]
    assert partial.history[4]["dyweight"]["train"][-1][0] == 25
    assert caught.value.state_path == tmp_path / "state.safetensors"
    assert not [name for name in files_left(tmp_path) if name.endswith(".partial")]
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as stored:
        assert json.loads(stored.metadata()["dyweight_state"])["format"] == "dyweight-state/2"

    resumed = run(mixture, noise, tmp_path, resume=True)
    assert_same_result(resumed, uninterrupted)
    assert resumed.timings["teacher_cache_hit"]


def test_ctrl_c_inside_a_model_call_resumes_from_the_last_whole_iteration(mixture, noise, uninterrupted, tmp_path):
    calls = {"count": 0}

    def interrupted_model(x, sigma):
        calls["count"] += 1
        if calls["count"] == 500:  # well into training: mid-iteration, between two model calls
            raise KeyboardInterrupt
        return mixture.denoise(x, sigma)

    with pytest.raises(TrainingInterrupted):
        run(mixture, noise, tmp_path, denoise=interrupted_model)
    assert not [name for name in files_left(tmp_path) if name.endswith(".partial")]
    assert_same_result(run(mixture, noise, tmp_path, resume=True), uninterrupted)


def test_interrupted_teacher_keeps_its_finished_pairs(mixture, noise, uninterrupted, tmp_path):
    stop = interrupt_when(lambda e: e["kind"] == "teacher" and e["done"] == 16, KeyboardInterrupt)
    with pytest.raises(TrainingInterrupted) as caught:
        run(mixture, noise, tmp_path, stop)
    assert caught.value.result.coefficients == {}
    pairs_file, = tmp_path.glob("pairs-*.safetensors")
    with safe_open(str(pairs_file), "pt") as stored:
        document = json.loads(stored.metadata()["dyweight_pairs"])
    assert (document["done"], document["complete"]) == (16, False)

    solved = []

    def heun(denoise, x, sigmas):  # recorded as "heun", like the built-in, so the key is the same
        solved.append(x.shape[0])
        return sample_heun(denoise, x, sigmas)

    resumed = run(mixture, noise, tmp_path, resume=True, teacher=heun)
    assert sum(solved) == len(noise) - 16
    assert_same_result(resumed, uninterrupted)


def test_resume_refuses_a_state_made_with_other_settings(mixture, noise, tmp_path):
    with pytest.raises(TrainingInterrupted):
        run(mixture, noise, tmp_path, interrupt_when(lambda e: e["kind"] == "train" and e["iteration"] == 5))
    with pytest.raises(ValueError, match="lr"):
        run(mixture, noise, tmp_path, resume=True, lr=0.5)
    with pytest.raises(FileNotFoundError):
        run(mixture, noise, tmp_path / "empty", resume=True)
