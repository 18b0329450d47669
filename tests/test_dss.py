"""DSS (arXiv 2505.21114) in the one update rule: the shipped searched solvers against the release's
sampling loops written out plainly, the data-prediction combination against DDIM, gradients, the file."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from comfyui_dyweight.coefficients import (
    CoefficientError, Coefficients, PresetRegistry, base_sigmas, dyweight_sample, euler)
from comfyui_dyweight.coefficients.io import METADATA_KEY
from comfyui_dyweight.release.dss_tables import DSS_PRESET_DIR, preset_name, write_dss_presets
from comfyui_dyweight.trainer.analytic import GaussianMixture
from reference_tables import load_dss_tables

F64 = torch.float64
FLOW_FAMILIES = ("flow_sit", "flow_flowdcn")
STEPS = range(5, 11)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.seeded(dim=6, components=3, std=0.3, seed=2)


@pytest.fixture(scope="module")
def noise(mixture):
    return torch.randn(16, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(3))


def shipped(family, steps):
    return Coefficients.load(DSS_PRESET_DIR / preset_name(family, steps))


# --- the release's loops, transcribed (NeuralSolver's diffusers schedulers) ------------------------------

def release_flow_loop(velocity, x, timedeltas, coeffs):
    """fm_scheduling.NeuralSolver: from t = 1, v_i = velocity(x, t), x ← x − dt_i·(Σ_{j<i} c_ij v_j
    + (1 − Σ_{j<i} c_ij) v_i), t ← t − dt_i."""
    t, velocities = 1.0, []
    for i, dt in enumerate(timedeltas):
        velocities.append(velocity(x, t))
        combined = (1 - sum(coeffs[i][:i])) * velocities[i]
        for j in range(i):
            combined = combined + coeffs[i][j] * velocities[j]
        x = x - dt * combined
        t = t - dt
    return x


def vp_alpha_sigma(t):
    """VPScheduler(β_min = 0.1, β_max = 20): t clamped to [1e-3, 1]."""
    t = min(max(t, 1e-3), 1.0)
    integral = 0.5 * 19.9 * t ** 2 + 0.1 * t
    return math.exp(-0.5 * integral), math.sqrt(1 - math.exp(-integral))


def release_vp_loop(eps_model, x, timedeltas, coeffs):
    """vp_scheduling.NeuralSolver: from t = 0.999, x0_i = (x − σ ε)/α, x ← (σ'/σ)·x + σ'(α'/σ' − α/σ)·x̄0
    with x̄0 = Σ_{j<i} c_ij x0_j + (1 − Σ_{j<i} c_ij) x0_i, σ', α' at t − dt_i. Returns x and the last t."""
    t, predictions = 0.999, []
    for i, dt in enumerate(timedeltas):
        alpha, sigma = vp_alpha_sigma(t)
        alpha_next, sigma_next = vp_alpha_sigma(t - dt)
        predictions.append((x - sigma * eps_model(x, t)) / alpha)
        combined = (1 - sum(coeffs[i][:i])) * predictions[i]
        for j in range(i):
            combined = combined + coeffs[i][j] * predictions[j]
        x = (sigma_next / sigma) * x + sigma_next * (alpha_next / sigma_next - alpha / sigma) * combined
        t = t - dt
    return x, t


# --- the shipped presets -------------------------------------------------------------------------------

def test_shipped_dss_presets_are_the_converted_release_numbers(tmp_path):
    source = tmp_path / "tables.json"
    source.write_text(json.dumps({"source": "MCG-NJU/NeuralSolver at commit 718879447fa8cedf3acbaa767bc479150d8f555e",
                                  "tables": load_dss_tables()}))
    regenerated = write_dss_presets(source, tmp_path)
    assert len(regenerated) == 18
    for fresh in regenerated:
        ours, theirs = Coefficients.load(DSS_PRESET_DIR / fresh.name), Coefficients.load(fresh)
        assert ours.weights.dtype == F64 and torch.equal(ours.weights, theirs.weights)
        assert torch.equal(ours.sigmas, theirs.sigmas) and ours.metadata() == theirs.metadata()


@pytest.mark.parametrize("family", FLOW_FAMILIES)
@pytest.mark.parametrize("steps", STEPS)
def test_flow_preset_equals_the_release_flow_loop(mixture, noise, family, steps):
    table = load_dss_tables()[family][f"step{steps}"]
    phi = shipped(family, steps)
    assert (phi.solver, phi.combine, phi.prediction, phi.order) == ("dss", "gradient", "flow", steps)
    ours = dyweight_sample(mixture.flow_denoise, noise, base_sigmas(phi), phi)

    def velocity(x, t):  # the flow model's output: v = ε − x0 = (x − D)/t
        return (x - mixture.flow_denoise(x, t)) / t

    plain = release_flow_loop(velocity, noise, table["timedeltas"], table["coeffs"])
    assert (ours - plain).abs().max().item() <= 1e-10


@pytest.mark.parametrize("steps", STEPS)
def test_ddpm_preset_equals_the_release_vp_loop(mixture, noise, steps):
    table = load_dss_tables()["ddpm_dit"][f"step{steps}"]
    phi = shipped("ddpm_dit", steps)
    assert (phi.solver, phi.combine, phi.prediction, phi.order) == ("dss", "denoised", "eps", steps)

    def eps_model(x, t):  # the DiT-like model's output in VP form x = α x0 + σ ε
        return mixture.eps_prediction(x, *vp_alpha_sigma(t))

    plain, end = release_vp_loop(eps_model, noise, table["timedeltas"], table["coeffs"])
    alpha_start, _ = vp_alpha_sigma(0.999)
    alpha_end, _ = vp_alpha_sigma(end)
    ours = dyweight_sample(mixture.denoise, noise / alpha_start, base_sigmas(phi), phi)  # VE: x̂ = x/α
    assert (alpha_end * ours - plain).abs().max().item() <= 1e-10


def test_ddpm_preset_grid_is_the_release_times():
    phi = shipped("ddpm_dit", 7)
    times = [0.999]
    for delta in load_dss_tables()["ddpm_dit"]["step7"]["timedeltas"]:
        times.append(times[-1] - delta)
    assert phi.schedule["kind"] == "ddpm_time"
    assert phi.schedule["t"][:-1] == pytest.approx(times[:-1], abs=1e-15) and phi.schedule["t"][-1] == 1e-3
    assert phi.sigma_max is None  # the grid is the model's own σ(t), whatever its σ_max


def test_flow_ode_solution_of_gaussian_data_is_the_affine_map(noise):
    """For data N(μ, τ²I) the flow ODE is affine: x_σ = (1 − σ)·μ + √((1 − σ)²τ² + σ²)·ε, so ε ↦ μ + τ·ε."""
    gaussian = GaussianMixture(torch.full((1, noise.shape[1]), 0.7, dtype=F64), torch.ones(1, dtype=F64), 0.4)
    exact = gaussian.means[0] + gaussian.std * noise
    assert (gaussian.flow_ode_solution(noise) - exact).abs().max().item() <= 1e-9


# --- the data-prediction combination ---------------------------------------------------------------------

def test_denoised_combination_with_euler_rows_is_ddim(mixture, noise):
    times = torch.linspace(0.999, 0.02, 8, dtype=F64).tolist()
    plain = noise.clone()  # DDIM (Song et al. 2021, Eq. 12, η = 0) in VP form
    for t, t_next in zip(times[:-1], times[1:]):
        alpha, sigma = vp_alpha_sigma(t)
        alpha_next, sigma_next = vp_alpha_sigma(t_next)
        x0 = mixture.posterior_mean(plain, alpha, sigma)
        plain = alpha_next * x0 + sigma_next * (plain - alpha * x0) / sigma
    sigmas = torch.tensor([vp_alpha_sigma(t)[1] / vp_alpha_sigma(t)[0] for t in times], dtype=F64)
    start = noise / vp_alpha_sigma(times[0])[0]
    for combine in ("denoised", "gradient"):
        phi = dataclasses.replace(euler(7), combine=combine)
        ours = vp_alpha_sigma(times[-1])[0] * dyweight_sample(mixture.denoise, start, sigmas, phi)
        assert (ours - plain).abs().max().item() <= 1e-10, combine


def test_denoised_combination_with_full_history_is_the_plain_formula(mixture, noise):
    phi = shipped("ddpm_dit", 6)
    sigmas = base_sigmas(phi)
    x, denoised = noise * sigmas[0], []
    for n in range(phi.steps):
        denoised.insert(0, mixture.denoise(x, sigmas[n]))
        combined = sum(phi.weights[n, k] * denoised[k] for k in range(n + 1))
        x = x + (sigmas[n + 1] - sigmas[n]) / sigmas[n] * (x - combined)
    ours = dyweight_sample(mixture.denoise, noise * sigmas[0], sigmas, phi)
    assert (ours - x).abs().max().item() <= 1e-10


def _dss_phi(free, deltas, combine):
    """A DSS Φ from free coefficients c[i][j] (j < i; newest implied) and positive deltas (σ_0 = 1)."""
    steps = deltas.numel()
    coeffs = torch.zeros(steps, steps, dtype=F64).index_put(torch.tril_indices(steps, steps, -1).unbind(), free)
    columns = [1 - coeffs.sum(1, keepdim=True)]
    columns += [torch.cat([coeffs.new_zeros(k), coeffs.diagonal(-k)])[:, None] for k in range(1, steps)]
    sigmas = torch.cat([torch.ones(1, dtype=F64), 1 - deltas.cumsum(0)])
    return Coefficients(weights=torch.cat(columns, 1), time_scale=torch.ones(steps, dtype=F64), sigmas=sigmas,
                        schedule={"kind": "explicit"}, solver="dss", combine=combine)


@pytest.mark.parametrize("combine", ["gradient", "denoised"])
def test_gradients_through_both_combinations_match_finite_differences(mixture, combine):
    steps = 4
    start = torch.randn(3, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(5)) * 2.0
    free = (0.3 * torch.randn(steps * (steps - 1) // 2, dtype=F64, generator=torch.Generator().manual_seed(6)))
    deltas = torch.tensor([0.2, 0.3, 0.25, 0.15], dtype=F64)  # ends at σ = 0.1

    def final_state(free, deltas):
        phi = _dss_phi(free, deltas, combine)
        return dyweight_sample(mixture.denoise, start, phi.sigmas, phi)

    assert torch.autograd.gradcheck(final_state, (free.requires_grad_(), deltas.requires_grad_()))


def test_gradient_path_with_free_weights_and_time_scales_matches_finite_differences(mixture):
    start = torch.randn(3, mixture.dim, dtype=F64, generator=torch.Generator().manual_seed(7)) * 5.0
    sigmas = torch.tensor([5.0, 2.0, 0.8, 0.3, 0.0], dtype=F64)
    weights = torch.tensor([[1.0, 0.0], [1.4, -0.5], [1.2, -0.1], [0.9, 0.2]], dtype=F64)

    def final_state(weights, scales):
        phi = Coefficients(weights=weights.tril(), time_scale=scales, divisor="net_sigma")
        return dyweight_sample(mixture.denoise, start, sigmas, phi)

    scales = torch.tensor([1.0, 0.95, 1.05, 1.0], dtype=F64)
    assert torch.autograd.gradcheck(final_state, (weights.requires_grad_(), scales.requires_grad_()))


# --- Φ and the file ----------------------------------------------------------------------------------------

def test_dss_phi_is_validated():
    phi = shipped("flow_sit", 5)
    with pytest.raises(CoefficientError, match="K = N"):
        dataclasses.replace(phi, weights=phi.weights[:, :3])
    with pytest.raises(CoefficientError, match="time scales of 1"):
        dataclasses.replace(phi, time_scale=torch.full((5,), 0.9, dtype=F64))
    shifted = phi.weights.clone()
    shifted[2, 0] += 0.1
    with pytest.raises(CoefficientError, match="row 2 sums to 1.1"):
        dataclasses.replace(phi, weights=shifted)
    ddpm = shipped("ddpm_dit", 5)
    last = ddpm.weights.clone()
    last[-1, 0] += 0.01
    with pytest.raises(CoefficientError, match="'denoised' every row .* row 4"):
        dataclasses.replace(ddpm, weights=last)
    with pytest.raises(CoefficientError, match="combine must be one of"):
        dataclasses.replace(phi, combine="velocity")
    with pytest.raises(CoefficientError, match="N\\+1 = 6 times"):
        dataclasses.replace(ddpm, schedule={"kind": "ddpm_time", "t": [0.9, 0.5, 0.1]})
    with pytest.raises(CoefficientError, match="strictly decreasing"):
        dataclasses.replace(ddpm, schedule={"kind": "ddpm_time", "t": [0.9, 0.5, 0.5, 0.3, 0.2, 0.1]})
    with pytest.raises(CoefficientError, match="not flow models"):
        dataclasses.replace(ddpm, prediction="flow")


def test_file_keeps_family_combination_and_source(tmp_path):
    phi = shipped("ddpm_dit", 8)
    phi.save(tmp_path / "copy.safetensors", dtype=F64)
    loaded = Coefficients.load(tmp_path / "copy.safetensors")
    assert (loaded.solver, loaded.combine) == ("dss", "denoised")
    assert loaded.source["repository"] == "MCG-NJU/NeuralSolver" and loaded.source["licence"] == "MIT"
    assert len(loaded.source["commit"]) == 40 and loaded.schedule == phi.schedule
    assert torch.equal(loaded.weights, phi.weights)


def test_file_without_the_new_keys_reads_as_dyweight_gradient(tmp_path):
    phi = euler(4)
    document = phi.metadata()
    for key in ("solver", "combine", "source"):
        del document[key]
    tensors = {"weights": phi.weights.float(), "time_scale": phi.time_scale.float()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={METADATA_KEY: json.dumps(document)})
    loaded = Coefficients.load(tmp_path / "old.safetensors")
    assert (loaded.solver, loaded.combine, loaded.source) == ("dyweight", "gradient", None)


def test_shipped_dss_presets_serve_their_prediction_type_and_user_copies_come_first(tmp_path):
    registry = PresetRegistry()
    assert registry.find("Flux", "flow", 6).path.name == "dss-flow-sit-nfe6.safetensors"
    assert registry.find("SD15", "eps", 6).path.name == "dss-ddpm-dit-nfe6.safetensors"
    assert registry.find("SD20", "v", 6).coefficients.solver == "dyweight"  # searched on ε-prediction only
    shipped("flow_sit", 6).save(tmp_path / "sit-nfe6.safetensors", dtype=F64)
    assert PresetRegistry([tmp_path]).find("Flux", "flow", 6).path == tmp_path / "sit-nfe6.safetensors"
