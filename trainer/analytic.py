"""Analytic denoisers: data distributions whose posterior mean E[x0 | x_σ] is exact.

Used to test and benchmark solvers and the trainer without a neural network: for a Gaussian
mixture the denoiser is exact, so the probability-flow ODE (Karras et al. 2022, Eq. 3,
dx/dσ = (x − D(x, σ))/σ) can be solved to near machine precision and every error a few-step solver
makes is its own truncation error.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture in ℝ^d: Σ_c π_c N(μ_c, τ² I), in VE form x_σ = x0 + σ ε.

    ``means`` is [C, d]; ``weights`` [C] (normalised here); ``std`` is τ.
    """

    means: torch.Tensor
    weights: torch.Tensor
    std: float

    def __post_init__(self):
        self.weights = self.weights / self.weights.sum()

    @classmethod
    def seeded(cls, dim: int = 8, components: int = 4, std: float = 0.3, seed: int = 0,
               dtype=torch.float64) -> "GaussianMixture":
        """A reproducible random mixture with well-separated means (a multimodal, curved ODE)."""
        generator = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=generator, dtype=dtype)
        weights = torch.rand(components, generator=generator, dtype=dtype) + 0.5
        return cls(means, weights, std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x_σ = x] for a batch x [B, d] and a scalar or per-sample σ."""
        return self.posterior_mean(x, 1.0, sigma)

    def flow_denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x = (1 − σ)·x0 + σ·ε] (rectified flow; σ = 1 is pure noise and gives the data mean)."""
        return self.posterior_mean(x, 1 - torch.as_tensor(sigma, dtype=x.dtype), sigma)

    def posterior_mean(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x0 | α·x0 + σ·ε = x] for a batch x [B, d] and scalar or per-sample α, σ (VE: α = 1; VP; flow)."""
        alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(-1, 1)  # [B or 1, 1]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
        means = self.means.to(x)
        variance = (alpha * self.std) ** 2 + sigma ** 2
        squared = ((x[:, None, :] - alpha[..., None] * means[None]) ** 2).sum(-1)  # [B, C]
        responsibility = torch.softmax(torch.log(self.weights.to(x))[None] - squared / (2 * variance), dim=1)
        shrink = (alpha * self.std ** 2 / variance)[..., None]
        component_means = means[None] + shrink * (x[:, None, :] - alpha[..., None] * means[None])  # [B, C, d]
        return (responsibility[..., None] * component_means).sum(1)

    def eps_prediction(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[ε | α·x0 + σ·ε = x] = (x − α·E[x0 | x])/σ: the exact output of an ε-prediction network (DDPM,
        Ho et al. 2020, Eq. 11) in VP form, for scalar or per-sample α, σ."""
        alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(-1, 1)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
        return (x - alpha * self.posterior_mean(x, alpha, sigma)) / sigma

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float, steps: int = 2000) -> torch.Tensor:
        """The probability-flow ODE solved from σ_from to σ_to by RK4 in log σ (error ≲ 1e-12 at 2000 steps).

        ``sigma_to = 0`` integrates to 1e-6 and then takes the exact limit x0 = D(x, σ → 0).
        """
        end = max(sigma_to, 1e-6)
        grid = torch.exp(torch.linspace(torch.log(torch.tensor(float(sigma_from))), torch.log(torch.tensor(end)),
                                        steps + 1, dtype=torch.float64))
        state = x.to(torch.float64)

        def slope(value, log_sigma):  # dx/d log σ = x − D(x, σ)
            return value - self.denoise(value, torch.exp(log_sigma))

        state = rk4(slope, state, torch.log(grid))
        if sigma_to == 0:
            state = self.denoise(state, torch.tensor(end, dtype=torch.float64))
        return state.to(x.dtype)

    def flow_ode_solution(self, noise: torch.Tensor, steps: int = 1000) -> torch.Tensor:
        """The rectified-flow ODE dx/dσ = (x − D)/σ for x = (1 − σ)·x0 + σ·ε from σ = 1 (x = ε) to 0: RK4 in
        σ down to ½, then the same ODE in VE form (x̂ = x/(1 − σ), σ̂ = σ/(1 − σ)) by :meth:`ode_solution`."""
        def slope(value, sigma):
            return (value - self.flow_denoise(value, sigma)) / sigma

        half = rk4(slope, noise.to(torch.float64), torch.linspace(1.0, 0.5, steps + 1, dtype=torch.float64))
        return self.ode_solution(half / 0.5, 1.0, 0.0).to(noise.dtype)


def rk4(slope, state: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Classical Runge–Kutta over the grid ``times`` for dx/dt = slope(x, t)."""
    for now, later in zip(times[:-1], times[1:]):
        h = later - now
        k1 = slope(state, now)
        k2 = slope(state + h / 2 * k1, now + h / 2)
        k3 = slope(state + h / 2 * k2, now + h / 2)
        k4 = slope(state + h * k3, later)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state


def gaussian_denoiser(data_std: float):
    """D(x, σ) = x·c²/(σ² + c²): the exact denoiser for zero-mean Gaussian data with std c (E[x₀ | x₀ + σε])."""
    variance = data_std ** 2

    def denoise(x, sigma):
        return x * variance / (sigma ** 2 + variance)

    return denoise
