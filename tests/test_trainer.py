"""The trainer (paper Algorithm 1) on analytic denoisers: quality, safety nets, cache, solvers and the CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch

from comfyui_dyweight.coefficients import (
    Coefficients, SamplingError, adams_bashforth, dyweight_sample, edm_sigmas, shifted_times)
from comfyui_dyweight.trainer import TEACHERS, DistillConfig, ModelSource, TrainingInterrupted, distill
from comfyui_dyweight.trainer.analytic import GaussianMixture, gaussian_denoiser
from comfyui_dyweight.trainer.model_calls import differentiable_calls
from comfyui_dyweight.trainer.optimise import batch_gradients
from comfyui_dyweight.trainer.students import TIME_FLOOR, DyWeightStudent, endpoint_loss
from comfyui_dyweight.trainer.pairs import PairSet, draw_noise
from comfyui_dyweight.trainer.teachers import sample_heun

F64 = torch.float64
SIGMA_MAX = 80.0
SMALL = DistillConfig(nfe=3, teacher_steps=24, iterations=120, batch_size=16, validation_every=20)


def quiet(event):
    """No progress bars in the test log."""


def karras(steps):
    return edm_sigmas(steps, 0.002, SIGMA_MAX, 7.0, to_zero=True)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.seeded(dim=4, components=3, std=0.5, seed=0)


def latents(count, dim, seed):
    return SIGMA_MAX * torch.randn(count, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def rmse(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def held_out_rmse(phi, denoise, pairs: PairSet, sigmas):
    """Recomputed here, independently of the trainer's bookkeeping."""
    return rmse(dyweight_sample(denoise, pairs.noise, sigmas, phi), pairs.target)


@pytest.fixture(scope="module")
def trained(mixture):
    return distill(ModelSource(mixture.denoise, latents(64, mixture.dim, 1), karras),
                   SMALL.with_given(nfe=[3, 4], iterations=200), progress=quiet)


def test_loss_falls_and_trained_phi_beats_adams_bashforth_on_new_seeds(mixture, trained):
    for nfe in (3, 4):
        losses = [loss for _, loss in trained.history[nfe]["dyweight"]["train"]]
        assert sum(losses[-20:]) < 0.5 * sum(losses[:20]), nfe
    fresh = latents(48, mixture.dim, 99)  # seeds never seen in training or validation
    exact = mixture.ode_solution(fresh, SIGMA_MAX, 0.0, steps=400)
    for nfe in (3, 4):
        ours = rmse(dyweight_sample(mixture.denoise, fresh, karras(nfe), trained.coefficients[nfe]), exact)
        ipndm = rmse(dyweight_sample(mixture.denoise, fresh, karras(nfe), adams_bashforth(nfe)), exact)
        assert ours < 0.7 * ipndm, (nfe, ours, ipndm)


def test_result_records_table_and_never_worse_than_init_on_held_out(mixture, trained):
    held_out = trained.validation_pairs
    assert len(held_out) == round(64 * 0.2) and len(trained.pairs) == 64
    for row in trained.table:
        nfe = row["nfe"]
        phi = trained.coefficients[nfe]
        init = adams_bashforth(nfe, 3)
        assert held_out_rmse(phi, mixture.denoise, held_out, karras(nfe)) == pytest.approx(row["rmse"], rel=1e-9)
        assert row["rmse"] <= held_out_rmse(init, mixture.denoise, held_out, karras(nfe))
        assert set(row["baselines"]) == {"euler", "ipndm", "dpmpp_2m"}
        ipndm = dyweight_sample(mixture.denoise, held_out.noise, karras(nfe), adams_bashforth(nfe))
        assert row["baselines"]["ipndm"] == pytest.approx(rmse(ipndm, held_out.target), rel=1e-9)
        record = phi.training
        assert (record["teacher"], record["teacher_steps"], record["pairs"]) == ("heun", 24, 64)
        assert record["returned"] == "trained" and record["pack_version"]
        assert torch.equal(phi.sigmas, karras(nfe).float())
    assert set(trained.timings["optimisation_s"]) == {3, 4} and trained.timings["teacher_s"] > 0


def test_returns_the_initialisation_when_training_cannot_improve(mixture, tmp_path):
    result = distill(ModelSource(mixture.denoise, latents(40, mixture.dim, 2), karras),
                     SMALL.with_given(iterations=30, lr=50.0), progress=quiet)
    phi = result.coefficients[3]
    assert torch.equal(phi.weights, adams_bashforth(3, 3).weights.float())
    assert torch.equal(phi.time_scale, torch.ones(3))
    assert phi.training["returned"] == "initialisation"
    assert any("did not improve" in note for note in result.notes)
    phi.save(tmp_path / "phi.safetensors")
    assert torch.equal(Coefficients.load(tmp_path / "phi.safetensors").weights, phi.weights)


def test_nan_from_the_denoiser_stops_training_and_keeps_the_last_good_phi(mixture):
    poisoned = {"next_call": False}

    def glitching(x, sigma):
        if poisoned["next_call"]:
            poisoned["next_call"] = False
            return torch.full_like(x, math.nan)
        return mixture.denoise(x, sigma)

    def progress(event):
        if event["kind"] == "train" and event["iteration"] == 50:
            poisoned["next_call"] = True

    result = distill(ModelSource(glitching, latents(48, mixture.dim, 3), karras), SMALL, progress=progress)
    row, = result.table
    assert row["status"] == "stopped" and row["iterations"] == 50
    assert any("NFE 3" in note and "stopped at iteration 51" in note and "NaN" in note for note in result.notes)
    phi = result.coefficients[3]
    assert torch.isfinite(phi.weights).all() and torch.isfinite(phi.time_scale).all()
    validated = dict((i, r) for i, r in result.history[3]["dyweight"]["validation"])
    assert max(validated) <= 50 and row["rmse"] == min(validated.values())
    held_out = result.validation_pairs
    assert held_out_rmse(phi, mixture.denoise, held_out, karras(3)) == pytest.approx(row["rmse"], rel=1e-9)
    assert row["rmse"] < held_out_rmse(adams_bashforth(3, 3), mixture.denoise, held_out, karras(3))


def test_projection_keeps_the_running_time_positive_and_leaves_feasible_phi_alone(mixture):
    sigmas = karras(4)
    init = adams_bashforth(4, 3)
    def student(weights):
        return DyWeightStudent(init, {"weights": weights, "log_scale": torch.zeros(4)}, sigmas)

    feasible = student(init.weights.float())
    before = feasible.weights.detach().clone()
    feasible.after_step()
    assert torch.equal(feasible.weights.detach(), before)

    overshooting = before.clone()
    overshooting[:3, 0] += torch.tensor([0.3, 1.5, 2.0])  # rows sum far above 1: t̃ would go negative
    x = latents(4, mixture.dim, 8)
    with pytest.raises(SamplingError):
        dyweight_sample(mixture.denoise, x, sigmas, student(overshooting).phi())
    projected = student(overshooting)
    projected.after_step()
    times = shifted_times(projected.phi().weights.double(), sigmas)
    assert (times[1:] >= 0.99 * TIME_FLOOR * sigmas[1:4]).all()  # on the floor, up to float32 rounding
    assert torch.equal(projected.weights.detach()[:, 1:], overshooting[:, 1:])  # only the newest weight moves
    assert torch.isfinite(dyweight_sample(mixture.denoise, x, sigmas, projected.phi())).all()


def counting_teacher(calls):
    def heun(denoise, x, sigmas):
        def model(value, sigma):
            calls.append(value.shape[0])
            return denoise(value, sigma)
        return sample_heun(model, x, sigmas)
    return heun


def test_cache_hit_skips_the_teacher_and_a_changed_key_misses(mixture, tmp_path):
    noise = latents(32, mixture.dim, 4)
    model_calls, teacher_calls = [], []

    def counting(x, sigma):
        model_calls.append(x.shape[0])
        return mixture.denoise(x, sigma)

    def run(key, nfe=(3,)):
        model_calls.clear(), teacher_calls.clear()
        return distill(ModelSource(counting, noise, karras, cache_key=key),
                       SMALL.with_given(nfe=nfe, teacher=counting_teacher(teacher_calls), iterations=0),
                       cache_dir=tmp_path, progress=quiet)

    first = run({"model": "a", "cfg": 7.5})
    miss_calls, miss_teacher = len(model_calls), len(teacher_calls)
    cached, = tmp_path.glob("pairs-*.safetensors")
    from safetensors import safe_open
    with safe_open(str(cached), "pt") as stored:
        assert json.loads(stored.metadata()["dyweight_pairs"])["key"]["key"] == {"model": "a", "cfg": 7.5}

    second = run({"model": "a", "cfg": 7.5})
    assert teacher_calls == [] and second.timings["teacher_cache_hit"]
    assert len(model_calls) == miss_calls - miss_teacher > 0
    assert torch.equal(second.pairs.target, first.pairs.target)
    assert run({"model": "a", "cfg": 7.5}, nfe=(5,)).timings["teacher_cache_hit"] and teacher_calls == []

    run({"model": "a", "cfg": 8.0})
    assert len(teacher_calls) == miss_teacher
    assert len(list(tmp_path.glob("pairs-*.safetensors"))) == 2
    assert not list(tmp_path.glob("*.partial"))


class TinyNet(torch.nn.Module):
    """A seeded MLP in EDM preconditioning (Karras et al. 2022, Table 1): a neural denoiser with parameters."""

    def __init__(self, dim):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, dim)).double()

    def forward(self, x, sigma):
        c_in = 1 / torch.sqrt(sigma ** 2 + 0.25)
        features = torch.cat([c_in * x, sigma.log().expand(x.shape[0], 1) / 4], dim=1)
        return 0.25 / (sigma ** 2 + 0.25) * x + sigma * 0.5 * c_in * self.net(features)


def test_checkpointing_changes_nothing_and_no_model_gradients_are_built(mixture):
    net = TinyNet(mixture.dim)
    noise = latents(24, mixture.dim, 5)
    source, config = ModelSource(net, noise, karras, baselines={}), SMALL.with_given(iterations=15, teacher_steps=8)
    plain = distill(source, config, progress=quiet)
    checkpointed = distill(source, config.with_given(checkpointing=True), progress=quiet)
    assert torch.equal(plain.coefficients[3].weights, checkpointed.coefficients[3].weights)
    assert torch.equal(plain.coefficients[3].time_scale, checkpointed.coefficients[3].time_scale)
    assert all(parameter.grad is None for parameter in net.parameters())
    assert all(parameter.requires_grad for parameter in net.parameters())  # nothing of the model was frozen

    pairs = plain.pairs.subset(slice(0, 8))
    phi = adams_bashforth(3, 3)
    phi.weights.requires_grad_(True)
    gradients = [torch.autograd.grad(endpoint_loss(differentiable_calls(net, on), pairs, karras(3), phi),
                                     [phi.weights])[0] for on in (False, True)]
    assert torch.equal(*gradients) and gradients[0].abs().sum() > 0


def test_a_model_that_changes_saved_tensors_in_place_gets_the_gradient_of_its_out_of_place_form():
    """A residual added in place after a layer norm saved its input (as ComfyUI's FLUX blocks do): with
    checkpointing and without, the gradient is that of the same model written out of place (plain
    autograd), and only that model's first call runs twice; a model without in-place changes runs once."""
    calls = []

    def model(in_place):
        def denoise(x, sigma):
            calls.append(in_place)
            hidden = x * sigma
            normed = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:])
            if in_place:
                hidden += normed.tanh()
            else:
                hidden = hidden + normed.tanh()
            return hidden * hidden

        return denoise

    x = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7, dtype=F64)

    def gradients(denoise):
        inputs = [x.clone().requires_grad_(True), sigma.clone().requires_grad_(True)]
        first = denoise(*inputs)
        return torch.autograd.grad(denoise(first, inputs[1]).sum(), inputs)  # two calls, as a trajectory makes

    expected = gradients(model(False))
    # (checkpointing, in place) → model runs: 2 calls; checkpointing recomputes both in the backward pass;
    # the in-place model's first call with a graph runs again with copies
    runs = {(False, False): 2, (False, True): 3, (True, False): 4, (True, True): 5}
    for (checkpointing, in_place), count in runs.items():
        calls.clear()
        got = gradients(differentiable_calls(model(in_place), checkpointing))
        assert all(torch.allclose(g, e, rtol=1e-12, atol=1e-12) for g, e in zip(got, expected))
        assert len(calls) == count, (checkpointing, in_place, calls)


def test_a_training_run_finds_an_in_place_model_once_and_copies_from_then_on(mixture):
    """The trainer makes one set of differentiable calls per run: of all the calls with a graph over
    several iterations, only the first runs twice (once watched, once with copies)."""
    with_graph = []

    def in_place(x, sigma):
        if torch.is_grad_enabled():
            with_graph.append(x.shape[0])
        hidden = mixture.denoise(x, sigma)
        hidden += torch.nn.functional.layer_norm(hidden, hidden.shape[-1:]).tanh() * 1e-3  # after layer_norm saved it
        return hidden

    config = SMALL.with_given(iterations=3, teacher_steps=8, batch_size=4)
    distill(ModelSource(in_place, latents(12, mixture.dim, 8), karras), config, progress=quiet)
    assert len(with_graph) == 3 * 3 + 1  # 3 iterations × NFE 3 (one micro-batch each), + the first call again


def test_micro_and_sampling_batches_bound_each_model_call_and_keep_the_gradient(mixture):
    net = TinyNet(mixture.dim)
    noise = latents(24, mixture.dim, 7)
    pairs = distill(ModelSource(net, noise, karras), SMALL.with_given(iterations=0, teacher_steps=8),
                    progress=quiet).pairs
    batch = pairs.subset(slice(0, 8))
    init = adams_bashforth(3, 3)
    student = DyWeightStudent(init, DyWeightStudent.initial_state(init), karras(3))
    whole = torch.autograd.grad(endpoint_loss(net, batch, karras(3), student.phi()), student.parameters)
    differentiated_rows = []

    def recording(x, sigma):
        if torch.is_grad_enabled():
            differentiated_rows.append(x.shape[0])
        return net(x, sigma)

    config = DistillConfig(iterations=1, batch_size=8, lr=0.1, validation_every=1, seed=0, checkpointing=True,
                           micro_batch_size=3, sampling_batch_size=8)  # 3 + 3 + 2: the last micro-batch is smaller
    loss, accumulated = batch_gradients(student, differentiable_calls(recording, config.checkpointing), batch, config)
    assert loss == pytest.approx(float(endpoint_loss(net, batch, karras(3), student.phi()).detach()), rel=1e-12)
    for expected, got in zip(whole, accumulated):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7) and expected.abs().sum() > 0
    assert differentiated_rows and max(differentiated_rows) == 3

    config = SMALL.with_given(iterations=15, teacher_steps=8)
    plain = distill(ModelSource(net, noise, karras), config, progress=quiet)
    rows_by_grad = {True: [], False: []}

    def recording_all(x, sigma):
        rows_by_grad[torch.is_grad_enabled()].append(x.shape[0])
        return net(x, sigma)

    micro = distill(ModelSource(recording_all, noise, karras),
                    config.with_given(micro_batch_size=5, sampling_batch_size=3), progress=quiet)
    assert torch.allclose(micro.coefficients[3].weights, plain.coefficients[3].weights, rtol=1e-4, atol=1e-5)
    assert not torch.equal(micro.coefficients[3].weights, adams_bashforth(3, 3).weights)  # it trained
    assert max(rows_by_grad[True]) == 5  # training: micro-batches of batch_size 16
    assert max(rows_by_grad[False]) == 3  # the teacher, the held-out checks and the baselines
    for bad in ({"micro_batch_size": 0}, {"sampling_batch_size": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be ≥ 1"):
            config.with_given(**bad)


def test_conditions_reach_the_denoiser_row_by_row(mixture):
    shifts = torch.tensor([[0.0] * mixture.dim, [3.0] * mixture.dim], dtype=F64)

    def conditional(x, sigma, condition):  # label 1: the same mixture moved by +3
        shift = shifts[condition]
        return mixture.denoise(x - shift, sigma) + shift

    labels = [0, 1] * 10
    noise = latents(20, mixture.dim, 6)
    result = distill(ModelSource(conditional, noise, karras, conditions=labels), SMALL.with_given(iterations=10),
                     progress=quiet)
    for label in (0, 1):
        rows = torch.tensor(labels) == label
        expected = sample_heun(lambda x, s: mixture.denoise(x - shifts[label], s) + shifts[label],
                               noise[rows], karras(24))
        assert torch.allclose(result.pairs.target[rows], expected, atol=1e-12)
        assert torch.equal(result.pairs.labels[rows], torch.full((10,), label))


def test_noise_generator_records_the_seed_of_every_pair():
    def two_per_seed(seed):
        return torch.full((2, 3), float(seed))

    noise, seeds, labels = draw_noise(two_per_seed, 5, None)
    assert seeds.tolist() == [0, 0, 1, 1, 2] and torch.equal(noise[:, 0], seeds.to(noise.dtype))
    assert labels is None


@pytest.mark.parametrize("name, order", [("heun", 2), ("dpmpp_2m", 2), ("euler", 1)])
def test_builtin_solvers_converge_at_their_order(name, order):
    """On Gaussian data the ODE solution is x(σ) = x_T·√(σ² + c²)/√(σ_T² + c²)."""
    c, x = 0.5, torch.tensor([[80.0, -40.0]], dtype=F64)

    def error(steps):
        exact = x * math.sqrt(0.002 ** 2 + c * c) / math.sqrt(SIGMA_MAX ** 2 + c * c)
        return (TEACHERS[name](gaussian_denoiser(c), x, edm_sigmas(steps, 0.002, SIGMA_MAX)) - exact).abs().max().item()

    assert math.log2(error(32) / error(64)) == pytest.approx(order, abs=0.25)


def test_train_command_end_to_end(tmp_path):
    out = tmp_path / "phi"
    command = [sys.executable, "-m", "comfyui_dyweight", "train", "--toy", "gmm", "--out", str(out),
               "--nfe", "3", "4", "--pairs", "40", "--iterations", "30", "--teacher-steps", "16"]

    def train(*extra):
        return subprocess.run(command + list(extra), capture_output=True, text=True, timeout=300)

    done = train()
    assert done.returncode == 0, done.stderr
    for nfe in (3, 4):
        phi = Coefficients.load(out / f"toy-gmm-nfe{nfe}.safetensors")
        assert phi.nfe == nfe and phi.schedule["kind"] == "edm" and phi.training["iterations"] == 30
    document = json.loads((out / "toy-gmm-validation.json").read_text())
    assert [row["nfe"] for row in document["table"]] == [3, 4]
    markdown = (out / "toy-gmm-validation.md").read_text()
    assert "| 3 |" in markdown and "| 4 |" in markdown and "ipndm" in markdown
    assert not list(out.rglob("*.partial"))

    before = (out / "toy-gmm-nfe3.safetensors").read_bytes()
    refused = train()
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (out / "toy-gmm-nfe3.safetensors").read_bytes() == before
    refused = train("--force", "--micro-batch-size", "0")
    assert refused.returncode == 2 and "micro_batch_size" in refused.stderr
    assert train("--force", "--micro-batch-size", "3", "--sampling-batch-size", "5").returncode == 0


def test_interrupting_without_a_state_dir_still_returns_the_best_so_far(mixture):
    def stop_at_40(event):
        if event["kind"] == "train" and event["iteration"] == 40:
            raise TrainingInterrupted()

    with pytest.raises(TrainingInterrupted, match="nothing saved") as caught:
        distill(ModelSource(mixture.denoise, latents(40, mixture.dim, 7), karras), SMALL.with_given(nfe=[3, 4]),
                progress=stop_at_40)
    assert list(caught.value.result.coefficients) == [3] and caught.value.state_path is None
    assert caught.value.result.history[3]["dyweight"]["train"][-1][0] == 40
