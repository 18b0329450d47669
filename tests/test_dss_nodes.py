"""The shipped DSS solvers (arXiv 2505.21114) on the real ComfyUI sampling path: KSampler (DyWeight), the
stock KSampler and SamplerCustom, on tiny FLUX (flow tables) and SD1.5 (DDPM tables) models.

The oracle is the release's sampling loop written out plainly as a k-diffusion sampler and run by the
stock SamplerCustom on the grid the mapping gives (docs/dss.md): the flow grid unshifted, the DDPM
times through the model's own σ(t).
"""

import importlib
import logging
import math

import pytest
import torch

import comfy_host
from comfyui_dyweight.coefficients import Coefficients
from comfyui_dyweight.release.dss_tables import DSS_PRESET_DIR, preset_name
from reference_tables import load_dss_tables


@pytest.fixture(scope="module")
def dw(host):
    return importlib.import_module("comfyui_dyweight.nodes")


@pytest.fixture(scope="module")
def flux(host):
    comfy_host.require_modern(what="flow-model sampling")
    return (comfy_host.tiny_flux_model(seed=0), comfy_host.tiny_flux_conditioning(batch=1, seed=0),
            comfy_host.empty_latent(batch=1, height=32, width=32, channels=16))


@pytest.fixture(scope="module")
def sd15(host, tiny_sd15):
    return tiny_sd15, comfy_host.tiny_sd15_conditioning(batch=2, seed=3), comfy_host.empty_latent(2, 32, 32)


def model_sampling_of(model):
    return importlib.import_module("comfyui_dyweight.host.model_facts").facts_from_patcher(model).model_sampling


def shipped(family, steps):
    return Coefficients.load(DSS_PRESET_DIR / preset_name(family, steps))


def release_flow_sampler(table):
    """fm_scheduling.NeuralSolver's loop as a k-diffusion sampler: v = (x − D)/σ, x ← x − dt_i·Σ c̄_ij v_j."""
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in, velocities = x.new_ones([x.shape[0]]), []
        for i, dt in enumerate(table["timedeltas"]):
            velocities.append((x - model(x, sigmas[i] * s_in, **(extra_args or {}))) / sigmas[i])
            combined = (1 - sum(table["coeffs"][i][:i])) * velocities[i]
            for j in range(i):
                combined = combined + table["coeffs"][i][j] * velocities[j]
            x = x - dt * combined
        return x
    return sample


def release_vp_sampler(table):
    """vp_scheduling.NeuralSolver's loop on ComfyUI's VE latents x̂ = x/α with α = 1/√(1 + σ̂²), σ = α·σ̂:
    x0_i = D, x ← (σ'/σ)·x + σ'(α'/σ' − α/σ)·Σ c̄_ij x0_j."""
    def sample(model, x_hat, sigmas, extra_args=None, callback=None, disable=None):
        s_in, predictions = x_hat.new_ones([x_hat.shape[0]]), []
        alphas = [1 / math.sqrt(1 + float(s) ** 2) for s in sigmas]
        for i in range(len(sigmas) - 1):
            predictions.append(model(x_hat, sigmas[i] * s_in, **(extra_args or {})))
            combined = (1 - sum(table["coeffs"][i][:i])) * predictions[i]
            for j in range(i):
                combined = combined + table["coeffs"][i][j] * predictions[j]
            alpha, alpha_next = alphas[i], alphas[i + 1]
            sigma, sigma_next = alpha * float(sigmas[i]), alpha_next * float(sigmas[i + 1])
            x = (sigma_next / sigma) * (alpha * x_hat) + sigma_next * (alpha_next / sigma_next - alpha / sigma) * combined
            x_hat = x / alpha_next
        return x_hat
    return sample


def sampler_custom(model, conditioning, latent, sampler, sigmas, cfg, seed=1):
    from comfy_extras import nodes_custom_sampler

    positive, negative = conditioning
    output = nodes_custom_sampler.SamplerCustom().sample(model, True, seed, cfg, positive, negative, sampler,
                                                         sigmas, latent)
    return (output.result if hasattr(output, "result") else output)[0]["samples"]


def ksampler_dyweight(dw, model, conditioning, latent, phi, cfg, seed=1):
    positive, negative = conditioning
    result = dw.KSamplerDyWeight().sample(model, seed, str(phi.nfe), cfg, positive, negative, latent,
                                          coefficients=phi)
    return result["result"][0]["samples"]


def model_sigma_at(model_sampling, timestep: float) -> float:
    """ComfyUI's discrete σ table, log-interpolated between integer timesteps."""
    low = math.floor(timestep)
    high = min(low + 1, len(model_sampling.sigmas) - 1)
    w = timestep - low
    return math.exp((1 - w) * math.log(float(model_sampling.sigmas[low])) + w * math.log(float(model_sampling.sigmas[high])))


@pytest.mark.parametrize("family", ["flow_sit", "flow_flowdcn"])
def test_flow_table_in_ksampler_dyweight_is_the_release_loop_on_the_unshifted_grid(dw, flux, family):
    import comfy.samplers

    model, conditioning, latent = flux
    phi = shipped(family, 6)
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, "6", coefficients=phi)
    table = load_dss_tables()[family]["step6"]
    grid = [1.0]
    for delta in table["timedeltas"][:-1]:
        grid.append(grid[-1] - delta)
    assert torch.allclose(sigmas, torch.tensor(grid + [0.0]), atol=1e-6)  # no FLUX resolution shift
    ours = ksampler_dyweight(dw, model, conditioning, latent, phi, cfg=1.0)
    release = sampler_custom(model, conditioning, latent, comfy.samplers.KSAMPLER(release_flow_sampler(table)),
                             sigmas, cfg=1.0)
    assert torch.isfinite(ours).all() and torch.allclose(ours, release, atol=1e-4)


def test_ddpm_table_in_ksampler_dyweight_is_the_release_loop_on_the_models_sigmas(dw, sd15):
    import comfy.samplers

    model, conditioning, latent = sd15
    phi = dw.DyWeightLoadCoefficients().load("shipped/dss/" + preset_name("ddpm_dit", 5))["result"][0]
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, "5", coefficients=phi)
    model_sampling = model_sampling_of(model)
    expected = [model_sigma_at(model_sampling, 1000 * t) for t in phi.schedule["t"]]
    assert torch.allclose(sigmas, torch.tensor(expected), rtol=1e-5)
    assert float(sigmas[0]) == pytest.approx(float(model_sampling.sigma_max), rel=1e-5)
    ours = ksampler_dyweight(dw, model, conditioning, latent, phi, cfg=3.0)
    table = load_dss_tables()["ddpm_dit"]["step5"]
    release = sampler_custom(model, conditioning, latent, comfy.samplers.KSAMPLER(release_vp_sampler(table)),
                             sigmas, cfg=3.0)
    assert torch.isfinite(ours).all() and torch.allclose(ours, release, atol=1e-4)


CASES = {"flux": ("flow_sit", 5, "simple", 1.0), "sd15": ("ddpm_dit", 7, "karras", 3.0)}


@pytest.mark.parametrize("case", CASES)
def test_dss_sampler_and_sigmas_in_sampler_custom_match_ksampler_dyweight(dw, request, case):
    model, conditioning, latent = request.getfixturevalue(case)
    family, steps, _, cfg = CASES[case]
    phi = shipped(family, steps)
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, str(phi.nfe), coefficients=phi)
    (sampler,) = dw.DyWeightSampler().get_sampler(coefficients=phi)
    custom = sampler_custom(model, conditioning, latent, sampler, sigmas, cfg)
    assert torch.equal(custom, ksampler_dyweight(dw, model, conditioning, latent, phi, cfg))


@pytest.mark.parametrize("case", CASES)
def test_stock_ksampler_samples_with_a_dss_file_from_the_users_folder(dw, request, case, tmp_path, monkeypatch,
                                                                       caplog):
    import folder_paths

    model, conditioning, latent = request.getfixturevalue(case)
    family, steps, scheduler, cfg = CASES[case]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "dyweight", ([str(tmp_path)], {".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    phi = shipped(family, steps)
    phi.save(tmp_path / preset_name(family, steps), dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="comfyui_dyweight"):
        stock = comfy_host.sample_with_ksampler(model, *conditioning, latent, 1, steps, cfg, "dyweight", scheduler)
    assert preset_name(family, steps) in caplog.text and "runs on its own learned schedule" in caplog.text
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, str(steps), coefficients=phi)  # not the scheduler's
    (sampler,) = dw.DyWeightSampler().get_sampler(coefficients=phi)
    expected = sampler_custom(model, conditioning, latent, sampler, sigmas, cfg)
    assert torch.isfinite(stock).all() and torch.allclose(stock, expected, rtol=1e-5, atol=1e-3), (stock - expected).abs().max()


@pytest.mark.parametrize("case", CASES)
def test_with_no_file_of_the_users_the_stock_sampler_runs_the_shipped_table(dw, request, case, tmp_path, monkeypatch,
                                                                             caplog):
    """A fresh install: the flow table on FLUX, the DDPM table on SD1.5, on their own grids (the bar of the
    'learned solvers out of the box' issue, in-process)."""
    import folder_paths

    model, conditioning, latent = request.getfixturevalue(case)
    family, steps, scheduler, cfg = CASES[case]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "dyweight", ([str(tmp_path)], {".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    with caplog.at_level(logging.INFO, logger="comfyui_dyweight"):
        stock = comfy_host.sample_with_ksampler(model, *conditioning, latent, 1, steps, cfg, "dyweight", scheduler)
    assert f"using {preset_name(family, steps)} (dss, shipped DSS, NFE {steps})" in caplog.text
    phi = shipped(family, steps)
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, str(steps), coefficients=phi)
    (sampler,) = dw.DyWeightSampler().get_sampler(coefficients=phi)
    expected = sampler_custom(model, conditioning, latent, sampler, sigmas, cfg)
    assert torch.allclose(stock, expected, rtol=1e-5, atol=1e-3), (stock - expected).abs().max()
