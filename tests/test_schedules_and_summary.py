"""Base grids against their closed forms written out plainly, ``base_sigmas`` per schedule kind,
``initial_coefficients`` and the human-readable ``Coefficients.summary``."""

import math

import pytest
import torch

from comfyui_dyweight.coefficients import (
    Coefficients, CoefficientError, adams_bashforth, base_sigmas, edm_sigmas, flux_sigmas, initial_coefficients,
    euler, variable_step_adams_bashforth)

F64 = torch.float64


def plain_karras(steps, sigma_min, sigma_max, rho):
    """Karras et al. (2022) Eq. 5 over i = 0 … steps − 1."""
    return [(sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            for i in range(steps)]


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_edm_sigmas_are_karras_eq5(steps):
    ends_at_min = edm_sigmas(steps, 0.002, 80.0, 7.0)
    assert ends_at_min.dtype == F64 and ends_at_min.tolist() == pytest.approx(plain_karras(steps + 1, 0.002, 80.0, 7.0),
                                                                             rel=1e-12)
    if steps > 1:
        to_zero = edm_sigmas(steps, 0.03, 14.6, 5.0, to_zero=True)
        assert to_zero.tolist() == pytest.approx(plain_karras(steps, 0.03, 14.6, 5.0) + [0.0], rel=1e-12)
    assert edm_sigmas(steps, 0.002, 80.0, dtype=torch.float32).dtype == torch.float32
    assert edm_sigmas(steps, 0.002, 80.0).tolist() == ends_at_min.tolist()  # ρ = 7 unless told
    with pytest.raises(CoefficientError, match="at least one step"):
        edm_sigmas(0, 0.002, 80.0)


@pytest.mark.parametrize("mu", [0.0, 0.63, 1.15])
def test_flux_sigmas_are_the_shifted_uniform_grid(mu):
    steps = 4
    times = [1 - i / steps for i in range(steps + 1)]
    expected = [math.exp(mu) / (math.exp(mu) + 1 / t - 1) if t > 0 else 0.0 for t in times]
    sigmas = flux_sigmas(steps, mu)
    assert sigmas.dtype == F64 and sigmas.tolist() == pytest.approx(expected, rel=1e-12, abs=0)
    assert flux_sigmas(steps, mu, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(CoefficientError, match="at least one step"):
        flux_sigmas(0, mu)


def test_base_sigmas_per_schedule_kind():
    edm = adams_bashforth(3, schedule={"kind": "edm", "rho": 5.0, "to_zero": True}, sigma_min=0.03, sigma_max=14.6)
    assert base_sigmas(edm).tolist() == pytest.approx(plain_karras(3, 0.03, 14.6, 5.0) + [0.0], rel=1e-12)
    assert base_sigmas(edm, steps=6).tolist() == pytest.approx(plain_karras(6, 0.03, 14.6, 5.0) + [0.0], rel=1e-12)
    assert base_sigmas(edm, dtype=torch.float32).dtype == torch.float32
    pixel = adams_bashforth(3, schedule={"kind": "edm", "rho": 7.0}, sigma_min=0.002, sigma_max=80.0)
    assert base_sigmas(pixel).tolist() == pytest.approx(plain_karras(4, 0.002, 80.0, 7.0), rel=1e-12)
    flux = adams_bashforth(4, schedule={"kind": "flux", "mu": 1.15})
    assert torch.equal(base_sigmas(flux), flux_sigmas(4, 1.15)) and torch.equal(base_sigmas(flux, 6), flux_sigmas(6, 1.15))
    assert base_sigmas(flux, dtype=torch.float32).dtype == torch.float32
    grid = torch.tensor([3.0, 2.0, 1.0, 0.0])
    explicit = adams_bashforth(3, schedule={"kind": "explicit"}, sigmas=grid)
    assert base_sigmas(explicit).dtype == F64 and base_sigmas(explicit).tolist() == grid.tolist()
    with pytest.raises(CoefficientError, match="grid has 3 steps, not 5"):
        base_sigmas(explicit, steps=5)
    with pytest.raises(CoefficientError, match="ComfyUI's 'karras' scheduler"):
        base_sigmas(adams_bashforth(3))


def test_initial_coefficients_picks_fixed_or_variable_step():
    grid = torch.tensor([5.0, 3.0, 1.5, 0.5, 0.0], dtype=F64)
    fixed = initial_coefficients(4, 3)
    assert torch.equal(fixed.weights, adams_bashforth(4, 3).weights)
    variable = initial_coefficients(4, 3, sigmas=grid, variable_step=True, prediction="eps")
    assert torch.equal(variable.weights, variable_step_adams_bashforth(grid, 3).weights) and variable.prediction == "eps"
    assert torch.equal(initial_coefficients(4, 2, sigmas=grid, afs=False).weights, adams_bashforth(4, 2).weights)
    with_afs = initial_coefficients(4, 2, afs=True, prediction="flow")  # the other fields reach the fixed rows too
    assert torch.equal(with_afs.weights, adams_bashforth(4, 2, afs=True).weights)
    assert (with_afs.afs, with_afs.prediction) == (True, "flow")
    with pytest.raises(CoefficientError, match="needs the base grid"):
        initial_coefficients(4, 3, variable_step=True)


def test_summary_says_what_the_phi_is():
    untrained = adams_bashforth(5, 3, afs=True)
    assert untrained.summary().splitlines() == [
        "DyWeight Φ: NFE 5 (6 steps, analytical first step), history K=3",
        "for any model (any prediction), schedule ComfyUI 'karras'",
        "untrained: adams_bashforth(order=3) initialisation",
    ]
    trained = adams_bashforth(
        4, 2, prediction="eps", model_family="SD15", cfg=7.5, schedule={"kind": "edm", "rho": 7.0, "to_zero": True},
        sigma_min=0.03, sigma_max=14.6,
        training={"initialiser": "x", "iterations": 300, "teacher": "heun", "teacher_steps": 40, "pairs": 64,
                  "base_model": "sd15.safetensors", "validation": {"rmse": 0.012345}})
    assert trained.summary().splitlines() == [
        "DyWeight Φ: NFE 4 (4 steps), history K=2",
        "for SD15 (eps), schedule EDM ρ=7 to 0",
        "CFG/guidance 7.5",
        "trained: teacher=heun, teacher_steps=40, pairs=64, iterations=300, base_model=sd15.safetensors",
        "held-out RMSE to teacher 0.01235",
    ]
    assert "schedule FLUX shift μ=1.15" in adams_bashforth(3, schedule={"kind": "flux", "mu": 1.15}).summary()
    explicit = adams_bashforth(3, schedule={"kind": "explicit"}, sigmas=torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert "schedule explicit sigmas" in explicit.summary()
    assert "schedule EDM ρ=5\n" in adams_bashforth(3, schedule={"kind": "edm", "rho": 5.0}, sigma_min=0.1,
                                                   sigma_max=9.0).summary() + "\n"


def dss_phi(**change):
    """A DSS solver on a DDPM-time grid: K = N, rows summing to one, data predictions combined."""
    weights = torch.tensor([[1.0, 0.0, 0.0], [1.5, -0.5, 0.0], [1.2, -0.4, 0.2]], dtype=F64)
    fields = dict(weights=weights, time_scale=torch.ones(3, dtype=F64), solver="dss", combine="denoised",
                  schedule={"kind": "ddpm_time", "t": [0.999, 0.6, 0.3, 0.0]}, prediction="eps",
                  source={"repository": "MCG-NJU/NeuralSolver", "commit": "abc123", "file": "dit.py", "licence": "MIT"},
                  training={"iterations": 100, "teacher": "euler"})
    fields.update(change)
    return Coefficients(**fields)


def test_summary_of_a_dss_solver():
    assert dss_phi().summary().splitlines() == [
        "DSS solver: NFE 3 (3 steps), history K=3, combines data predictions",
        "for any model (eps), schedule DDPM times 0.999 … 0 (the model's own σ(t))",
        "from MCG-NJU/NeuralSolver, abc123, dit.py, MIT",
        "searched: teacher=euler, iterations=100",
    ]
    assert "from MCG-NJU/NeuralSolver, MIT\n" in dss_phi(source={"repository": "MCG-NJU/NeuralSolver",
                                                                  "licence": "MIT"}).summary() + "\n"


def test_base_sigmas_of_a_ddpm_time_grid():
    grid = torch.tensor([150.0, 2.0, 0.5, 0.0], dtype=F64)
    assert base_sigmas(dss_phi(sigmas=grid)).tolist() == grid.tolist()
    with pytest.raises(CoefficientError, match="grid has 3 steps, not 4"):
        base_sigmas(dss_phi(sigmas=grid), steps=4)
    with pytest.raises(CoefficientError, match="DDPM time: its sigmas come from the model"):
        base_sigmas(dss_phi())
    flux_with_grid = adams_bashforth(3, schedule={"kind": "flux", "mu": 0.5}, sigmas=torch.tensor([0.9, 0.5, 0.2, 0.0]))
    assert torch.equal(base_sigmas(flux_with_grid), flux_sigmas(3, 0.5))  # only explicit/DDPM-time grids are stored
    assert base_sigmas(adams_bashforth(2, schedule={"kind": "edm", "rho": 7.0}, sigma_min=0.1,
                                       sigma_max=5.0)).tolist()[-1] == pytest.approx(0.1)  # no to_zero: ends at σ_min


def test_step_counts_below_one_are_refused():
    assert euler(1).steps == 1 and flux_sigmas(1, 0.5).tolist() == [1.0, 0.0]
    with pytest.raises(CoefficientError, match="NFE must be ≥ 1, got 0"):
        euler(0)
