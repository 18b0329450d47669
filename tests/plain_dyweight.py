"""Independent oracles for the update rule: Eqs. 6–8 of arXiv 2603.11607 written out step by step in
float64, and exact denoisers with known probability-flow solutions (VE and flow form).

Nothing here imports the pack: the tests compare ``dyweight_sample`` (and the ComfyUI sampler built on
it) with these plain loops, so a changed formula in either place shows up as a mismatch.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def plain_dyweight(denoise, x, sigmas, weights, time_scale, *, afs=False, divisor="sigma", flow=False,
                   calls=None, steps_seen=None):
    """The DyWeight rule, one step at a time, in float64.

    ``weights`` [N][K] (column 0 = newest gradient), ``time_scale`` [N] and ``sigmas`` [N+1] are plain
    floats. For n = 0 … N−1, with t̃_0 = σ_0:
      g_n = (x_n − D(x_n, s_n·t̃_n)) / t̃_n   (divisor "sigma")   or   / (s_n·t̃_n)   ("net_sigma");
      with AFS, g_0 = x_0/√(1 + t̃_0²) (VE form) or x_0 (flow form), and no model call;
      x_{n+1} = x_n + (σ_{n+1} − t̃_n) · Σ_{k < min(n+1, K)} W[n][k] · g_{n−k};
      t̃_{n+1} = t̃_n + (Σ_{k < min(n+1, K)} W[n][k]) · (σ_{n+1} − t̃_n).
    ``calls`` collects the query times the model was asked at; ``steps_seen`` collects per step
    (x_n, t̃_n or the query time, the denoised estimate) as the sampler's callback reports them.
    """
    sigmas = [float(value) for value in sigmas]
    x = x.to(F64)
    running = sigmas[0]
    gradients = []  # newest last
    for n, row in enumerate(weights):
        if afs and n == 0:
            gradient = x if flow else x / math.sqrt(1.0 + running * running)
            denoised, reported = x - running * gradient, running
        else:
            query = float(time_scale[n]) * running
            denoised = denoise(x, torch.tensor(query, dtype=F64)).to(F64)
            if calls is not None:
                calls.append(query)
            gradient = (x - denoised) / (running if divisor == "sigma" else query)
            reported = query
        if steps_seen is not None:
            steps_seen.append((x, reported, denoised))
        gradients.append(gradient)
        step = sigmas[n + 1] - running
        available = min(n + 1, len(row))
        direction = sum(float(row[k]) * gradients[-1 - k] for k in range(available))
        x = x + step * direction
        running = running + sum(float(row[k]) for k in range(available)) * step
    return x


def gaussian_mixture_flow_denoiser(means, mixture_weights, std):
    """E[x0 | x_t] for x_t = (1 − t)·x0 + t·ε with x0 ~ Σ_c π_c N(μ_c, τ²I) (rectified flow), exact for t ∈ (0, 1].

    Given component c, x_t ~ N((1 − t)μ_c, v I) with v = (1 − t)²τ² + t², and
    E[x0 | x_t, c] = μ_c + (1 − t)τ²/v · (x_t − (1 − t)μ_c); the responsibilities are the posterior
    component probabilities under those Gaussians. At t = 1 this is Σ_c π_c μ_c (x carries no signal).
    """
    means = torch.as_tensor(means, dtype=F64)
    log_prior = torch.log(torch.as_tensor(mixture_weights, dtype=F64) / sum(mixture_weights))

    def denoise(x, t):
        t = torch.as_tensor(t, dtype=F64)
        signal = 1 - t
        variance = signal ** 2 * std ** 2 + t ** 2
        offset = x.to(F64)[:, None, :] - signal * means[None]  # [B, C, d]
        responsibility = torch.softmax(log_prior[None] - (offset ** 2).sum(-1) / (2 * variance), dim=1)
        component_means = means[None] + (signal * std ** 2 / variance) * offset
        return (responsibility[..., None] * component_means).sum(1)

    return denoise


def gaussian_ve_solution(x, sigma_from, sigma_to, data_std):
    """Exact probability-flow solution for zero-mean Gaussian data (std c) in VE form.

    D(x, σ) = x·c²/(σ² + c²) makes dx/dσ = (x − D)/σ = x·σ/(σ² + c²), so x(σ) ∝ √(σ² + c²).
    """
    return x * math.sqrt((sigma_to ** 2 + data_std ** 2) / (sigma_from ** 2 + data_std ** 2))


def gaussian_flow_denoiser(data_std):
    """E[x0 | x_t] = x·(1 − t)c² / ((1 − t)²c² + t²) for zero-mean Gaussian data (std c), flow form."""
    def denoise(x, t):
        t = torch.as_tensor(t, dtype=x.dtype)
        return x * (1 - t) * data_std ** 2 / ((1 - t) ** 2 * data_std ** 2 + t ** 2)

    return denoise


def gaussian_flow_solution(x, t_from, t_to, data_std):
    """Exact flow-ODE solution for zero-mean Gaussian data: x(t) ∝ √((1 − t)²c² + t²) (the marginal std)."""
    def spread(t):
        return math.sqrt((1 - t) ** 2 * data_std ** 2 + t ** 2)

    return x * spread(t_to) / spread(t_from)
