"""Training the DSS family (arXiv 2505.21114) with the shared trainer, on exact Gaussian-mixture denoisers.

Oracles: the mixture's exact probability-flow ODE solution, a plainly written Euler teacher loop, the
schedule's own grid points, and held-out errors recomputed here from the returned Φ.
"""

import json
import subprocess
import sys

import pytest
import torch

from comfyui_dyweight.coefficients import Coefficients, dyweight_sample, edm_sigmas, euler
from comfyui_dyweight.trainer import DistillConfig, ModelSource, TrainingInterrupted, distill
from comfyui_dyweight.trainer.analytic import GaussianMixture
from comfyui_dyweight.trainer.report import validation_markdown
from comfyui_dyweight.trainer.students import DSSStudent, ScheduleTime

F64 = torch.float64
SIGMA_MAX = 80.0
DSS = DistillConfig(nfe=4, solver="dss", teacher="euler", teacher_steps=32, iterations=80, batch_size=16,
                    validation_every=10)


def karras(steps):
    return edm_sigmas(steps, 0.002, SIGMA_MAX, 7.0, to_zero=True)


def latents(count, dim, seed):
    return SIGMA_MAX * torch.randn(count, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def quiet(event):
    """No progress bars in the test log."""


def rmse(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.seeded(dim=4, components=3, std=0.5, seed=0)


@pytest.fixture(scope="module")
def trained(mixture):
    return distill(ModelSource(mixture.denoise, latents(64, mixture.dim, 1), karras), DSS, progress=quiet)


def test_schedule_time_meets_the_schedule_at_its_own_points_and_inverts():
    fine = karras(32)  # 32 positive sigmas, then 0
    warp = ScheduleTime(fine)
    u = torch.arange(33, dtype=F64) / 32
    assert torch.allclose(warp.sigmas(u), fine, rtol=1e-12)
    assert torch.allclose(warp.times(fine), u, atol=1e-12)
    between = warp.sigmas(torch.tensor([0.5 / 32], dtype=F64))[0]
    assert float(fine[1]) < float(between) < float(fine[0])
    assert between == pytest.approx(float((fine[0] * fine[1]).sqrt()), rel=1e-12)  # log-linear
    last = warp.sigmas(torch.tensor([31.25 / 32], dtype=F64))[0]
    assert last == pytest.approx(0.75 * float(fine[-2]), rel=1e-12)  # the final interval, linear to 0


def test_dss_starts_at_euler_on_the_models_grid(mixture):
    template = euler(4, order=4, solver="dss", sigmas=karras(4).float())
    warp = ScheduleTime(karras(32))
    student = DSSStudent(template, DSSStudent.initial_state(template, warp), warp)
    phi = student.phi()
    assert torch.allclose(phi.sigmas.double(), karras(4), rtol=1e-5)  # within float32 logits
    assert torch.equal(phi.weights.detach(), torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=phi.weights.dtype))


def test_trained_dss_keeps_its_grid_in_the_schedule_and_beats_euler_on_new_seeds(mixture, trained):
    phi = trained.coefficients[4]
    assert phi.solver == "dss" and phi.order == phi.steps == 4 and not phi.afs
    assert torch.allclose(phi.weights.sum(1).double(), torch.ones(4, dtype=F64), atol=1e-6)
    grid = phi.sigmas.double()
    assert grid[0] == pytest.approx(SIGMA_MAX) and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    assert not torch.allclose(grid, karras(4), rtol=1e-3)  # the grid itself was learned
    losses = [loss for _, loss in trained.history[4]["dss"]["train"]]
    assert sum(losses[-10:]) < 0.75 * sum(losses[:10])
    fresh = latents(48, mixture.dim, 99)
    exact = mixture.ode_solution(fresh, SIGMA_MAX, 0.0, steps=400)
    ours = rmse(dyweight_sample(mixture.denoise, fresh, grid, phi), exact)
    assert trained.candidates[4]["dss"] is phi  # the kept Φ of the only family
    init = euler(4, order=4, solver="dss")
    assert ours < 0.6 * rmse(dyweight_sample(mixture.denoise, fresh, karras(4), init), exact)
    row, = trained.table
    held_out = trained.validation_pairs
    assert rmse(dyweight_sample(mixture.denoise, held_out.noise, grid, phi), held_out.target) == pytest.approx(
        row["rmse"], rel=1e-9)


def test_the_pairs_keep_the_teachers_path_as_a_plain_euler_loop_computes_it(mixture, trained):
    pairs = trained.pairs.subset(slice(0, 5))
    sigmas = karras(32)
    x, states = pairs.noise.clone(), [pairs.noise.clone()]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * (x - mixture.denoise(x, sigma)) / sigma
        states.append(x)
    assert torch.allclose(pairs.path.double(), torch.stack(states, 1), rtol=1e-5, atol=1e-5)  # stored in float32
    assert torch.equal(pairs.path_sigmas, sigmas)


def test_both_keeps_the_family_with_the_lower_held_out_error_and_reports_each(mixture):
    config = DSS.with_given(solver="both", nfe=[3, 4], iterations=40)
    result = distill(ModelSource(mixture.denoise, latents(48, mixture.dim, 3), karras), config, progress=quiet)
    held_out = result.validation_pairs
    for row in result.table:
        nfe = row["nfe"]
        errors = {family: rmse(dyweight_sample(mixture.denoise, held_out.noise, phi.sigmas.double()
                                               if family == "dss" else karras(nfe), phi), held_out.target)
                  for family, phi in result.candidates[nfe].items()}
        assert set(errors) == {"dyweight", "dss"} == set(row["families"])
        kept = min(errors, key=errors.get)
        assert row["solver"] == kept and result.coefficients[nfe].solver == kept
        for family, error in errors.items():
            assert row["families"][family]["rmse"] == pytest.approx(error, rel=1e-6)
    markdown = validation_markdown(result.table)
    assert "| kept | DyWeight | DyWeight init | DSS | DSS init |" in markdown


def test_dss_resume_is_bit_identical(mixture, tmp_path):
    source = ModelSource(mixture.denoise, latents(40, mixture.dim, 5), karras)
    config = DSS.with_given(iterations=30)
    reference = distill(source, config, state_dir=tmp_path / "reference", progress=quiet)

    def stop_at_17(event):
        if event["kind"] == "train" and event["iteration"] == 17:
            raise TrainingInterrupted()

    with pytest.raises(TrainingInterrupted):
        distill(source, config, state_dir=tmp_path / "run", progress=stop_at_17)
    resumed = distill(source, config, state_dir=tmp_path / "run", resume=True, progress=quiet)
    for name in ("weights", "sigmas"):
        assert torch.equal(getattr(resumed.coefficients[4], name), getattr(reference.coefficients[4], name))
    assert resumed.history == reference.history


def test_train_command_takes_the_solver(tmp_path):
    out = tmp_path / "phi"
    done = subprocess.run([sys.executable, "-m", "comfyui_dyweight", "train", "--toy", "gmm", "--out", str(out),
                           "--solver", "both", "--nfe", "3", "--pairs", "24", "--iterations", "8",
                           "--teacher-steps", "8", "--batch-size", "8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    phi = Coefficients.load(out / "toy-gmm-nfe3.safetensors")
    row, = json.loads((out / "toy-gmm-validation.json").read_text())["table"]
    assert phi.solver == row["solver"] and set(row["families"]) == {"dyweight", "dss"}
    refused = subprocess.run([sys.executable, "-m", "comfyui_dyweight", "train", "--toy", "gmm", "--out", str(out),
                              "--solver", "other", "--force"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "solver" in refused.stderr


def test_path_loss_is_the_release_loss_written_out(mixture, trained):
    from comfyui_dyweight.trainer.students import path_loss

    batch = trained.pairs.subset(slice(0, 6))
    phi = trained.coefficients[4]
    grid = phi.sigmas.double()
    # the student's states, one plain Euler-form step at a time (rows sum to one: t̃ = σ)
    x, residuals, states = batch.noise.clone(), [], []
    for n in range(4):
        residuals.insert(0, x - mixture.denoise(x, grid[n]))
        x = x + sum((grid[n + 1] - grid[n]) * phi.weights[n, k].double() / grid[n - k] * residuals[k]
                    for k in range(n + 1))
        states.append(x)
    teacher_sigmas = batch.path_sigmas
    expected = 1000 * torch.nn.functional.huber_loss(states[-1], batch.target, delta=1e-3)
    for n in range(1, 4):
        nearest = int((teacher_sigmas - grid[n]).abs().argmin())
        expected = expected + (states[n - 1] - batch.path[:, nearest].double()).pow(2).mean() / (1 + grid[n] ** 2)
    assert float(path_loss(mixture.denoise, batch, phi)) == pytest.approx(float(expected), rel=1e-5)


def test_dss_starts_from_a_shipped_flow_table_on_a_flow_model(mixture):
    """A flow model's schedule runs from σ = 1 to 0, so the shipped SiT table's grid lands as it is."""
    from comfyui_dyweight.coefficients.presets import SHIPPED_DIR

    table_path = SHIPPED_DIR / "dss" / "dss-flow-sit-nfe5.safetensors"
    table = Coefficients.load(table_path)

    def flow_schedule(steps):
        return torch.linspace(1.0, 0.0, steps + 1, dtype=F64)

    noise = torch.randn(24, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(8))
    config = DSS.with_given(nfe=5, iterations=0, teacher_steps=64, dss_init=str(table_path))
    result = distill(ModelSource(mixture.flow_denoise, noise, flow_schedule), config, progress=quiet)
    phi = result.coefficients[5]
    assert torch.allclose(phi.sigmas.double(), table.sigmas.double(), atol=2e-3)  # within the fine grid's float32
    assert torch.allclose(phi.weights[:-1, 1:].double(), table.weights[:-1, 1:].double(), atol=1e-6)
    assert torch.allclose(phi.weights.sum(1).double(), torch.ones(5, dtype=F64), atol=1e-6)
    assert phi.training["initialiser"] == "dss_init dss-flow-sit-nfe5.safetensors"
    with pytest.raises(ValueError, match="dss_init .* must be a DSS Φ"):
        distill(ModelSource(mixture.flow_denoise, noise, flow_schedule), config.with_given(nfe=4), progress=quiet)
