"""`dyweight` handed a slice of a schedule (KSamplerAdvanced start/end steps, two-stage workflows), in-process
on the real sampling path with the tiny SD1.5 model.

Oracles: the stock `ipndm` sampler on the same two-stage graph (for Adams–Bashforth on each slice), and the
update rule run with the slice's rows written out in the test (for a learned Φ whose grid holds the slice).
"""

import dataclasses
import importlib
import logging

import pytest
import torch

import comfy_host
from comfyui_dyweight.coefficients import Coefficients, adams_bashforth, dyweight_sample

STEPS, SPLIT, CFG = 6, 3, 4.0


@pytest.fixture(scope="module")
def dw(host):
    return importlib.import_module("comfyui_dyweight.nodes")


@pytest.fixture
def dyweight_folder(dw, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "dyweight", ([str(tmp_path)], {".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


def two_stages(model, sampler: str, conditioning, latent, second_model=None, scheduler="karras"):
    """KSamplerAdvanced twice, as a two-stage workflow: steps 0–3 with leftover noise, then 3–6 (with
    ``second_model`` when given: Wan 2.2's high-noise then low-noise expert, an SDXL refiner)."""
    import nodes

    positive, negative = conditioning
    advanced = nodes.KSamplerAdvanced()
    (first,) = advanced.sample(model, "enable", 5, STEPS, CFG, sampler, scheduler, positive, negative, latent,
                               0, SPLIT, "enable")
    (second,) = advanced.sample(second_model or model, "disable", 5, STEPS, CFG, sampler, scheduler, positive,
                                negative, first, SPLIT, 10000, "disable")
    return first["samples"], second["samples"]


def learned_phi():
    """A user's trained Φ for SD15 on the karras schedule (rows that are no Adams–Bashforth)."""
    phi = adams_bashforth(STEPS, 3, prediction="eps", model_family="SD15",
                          schedule={"kind": "comfy", "scheduler": "karras"}, training={"iterations": 100})
    n = torch.arange(STEPS, dtype=torch.float64)[:, None]
    k = torch.arange(3, dtype=torch.float64)[None, :]
    weights = (phi.weights + 0.1 * torch.cos(1.7 * n + 2.3 * k)).tril()
    weights[-1] = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    return dataclasses.replace(phi, weights=weights, time_scale=1 + 0.02 * torch.sin(n.flatten()))


def test_a_slice_no_learned_phi_was_made_for_runs_adams_bashforth(dw, host, tiny_sd15, dyweight_folder, caplog):
    if not host.has_ipndm:
        pytest.skip(f"the host at {host.path} has no ipndm sampler to compare with")
    conditioning = comfy_host.tiny_sd15_conditioning(batch=1, seed=1)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with caplog.at_level(logging.INFO, logger="comfyui_dyweight"):
        ours = two_stages(tiny_sd15, "dyweight", conditioning, latent)
    stock = two_stages(tiny_sd15, "ipndm", conditioning, latent)
    for mine, reference in zip(ours, stock):
        assert torch.allclose(mine, reference, atol=1e-4, rtol=1e-4), (mine - reference).abs().max()
    assert caplog.text.count("Adams–Bashforth (a slice of a schedule no learned Φ was made for)") == 2


def test_a_slice_of_a_learned_phis_grid_runs_its_rows(dw, tiny_sd15, dyweight_folder, caplog):
    learned_phi().save(dyweight_folder / "mine-nfe6.safetensors")
    phi = Coefficients.load(dyweight_folder / "mine-nfe6.safetensors")  # as the sampler reads it (float32)
    conditioning = comfy_host.tiny_sd15_conditioning(batch=1, seed=1)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with caplog.at_level(logging.INFO, logger="comfyui_dyweight"):
        first, second = two_stages(tiny_sd15, "dyweight", conditioning, latent)
    assert "steps 0–2 of mine-nfe6.safetensors" in caplog.text and "steps 3–5 of mine-nfe6.safetensors" in caplog.text

    # The second stage by hand: rows 3–5, the gradients from before step 3 added to the newest one, run by
    # the update rule on the slice's sigmas from the first stage's latent (no noise added, as in the graph).
    import comfy.sample
    import comfy.samplers

    w = phi.weights
    rows = torch.tensor([[w[3].sum(), 0, 0], [w[4, 0] + w[4, 2], w[4, 1], 0], [w[5, 0], w[5, 1], w[5, 2]]])
    by_hand = dataclasses.replace(phi, weights=rows, time_scale=phi.time_scale[SPLIT:])
    facts = importlib.import_module("comfyui_dyweight.host.model_facts").facts_from_patcher(tiny_sd15)
    sigmas = importlib.import_module("comfyui_dyweight.host.model_facts").comfy_sigmas(
        facts.model_sampling, "karras", STEPS)[SPLIT:]

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        return dyweight_sample(lambda latent, sigma: model(latent, sigma * s_in, **(extra_args or {})), x, sigmas,
                               by_hand)

    positive, negative = conditioning
    with torch.no_grad():
        expected = comfy.sample.sample_custom(tiny_sd15, torch.zeros_like(first), CFG,
                                              comfy.samplers.KSAMPLER(sampler_function), sigmas, positive,
                                              negative, first, disable_pbar=True, seed=5)
    assert torch.allclose(second, expected, atol=1e-4, rtol=1e-4), (second - expected).abs().max()


def test_wan22_two_experts_each_run_adams_bashforth_on_their_slice(dw, host, dyweight_folder, caplog):
    """Wan 2.2's graph: the high-noise expert samples steps 0–3, the low-noise expert 3–6 (tiny models)."""
    comfy_host.require_modern(host, "Wan 2.2 (a current ComfyUI)")
    import model_matrix

    family = model_matrix.FAMILIES["wan22"]
    high, low = model_matrix.build(family, seed=1), model_matrix.build(family, seed=2)
    conditioning = model_matrix.conditioning(family, seed=3)
    latent = model_matrix.empty_latent(family)
    with caplog.at_level(logging.INFO, logger="comfyui_dyweight"):
        ours = two_stages(high, "dyweight", conditioning, latent, second_model=low, scheduler="simple")
    stock = two_stages(high, "ipndm", conditioning, latent, second_model=low, scheduler="simple")
    for mine, reference in zip(ours, stock):
        assert torch.allclose(mine, reference, atol=1e-4, rtol=1e-4), (mine - reference).abs().max()
    assert not torch.allclose(ours[1], ours[0], atol=1e-3)  # the second expert did sample
    assert caplog.text.count("steps: Adams–Bashforth (a slice of a schedule no learned Φ was made for)") == 2
