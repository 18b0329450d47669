"""Every model family ComfyUI ships for image and video sampling, through every way the pack samples.

Tiny real models (tests/model_matrix.py) on the current host: the stock KSampler with ``dyweight``,
KSampler (DyWeight) at denoise 1.0 and 0.6 with a batch of 2, and SamplerCustomAdvanced with
DyWeight Sampler + DyWeight Sigmas. The oracle is ComfyUI's own ``ipndm``: Adams–Bashforth (iPNDM) rows
must give what the stock KSampler gives with ``ipndm`` on the same sigmas. Where a learned preset exists
(the shipped DSS tables, NFE 5–10) the node and SamplerCustomAdvanced must pick and run the same one. The
labels (prediction, σ_data) are checked against the hand-written family table. Image-conditioned
families get the extras ComfyUI's conditioning nodes set (concatenated latents and masks, CLIP vision
outputs, unCLIP embeddings, audio, camera and pose inputs); Lotus-D, which no multistep solver can
sample, must be refused with a message saying how to run it. A family the host lacks is skipped, saying so.
"""
import importlib

import pytest
import torch

import comfy_host
import model_matrix
from comfyui_dyweight.coefficients import adams_bashforth, adams_bashforth_preset

STEPS = 5  # Adams–Bashforth rows use 1, 2, 3, 4 gradients, then the final Euler step to σ = 0
PRESET_STEPS = 4  # no learned preset is shipped below NFE 5: the stock KSampler's `dyweight` runs Adams–Bashforth
CFG = 3.0
SEED = 5
FAMILIES = sorted(model_matrix.FAMILIES)


@pytest.fixture(scope="module")
def dw(host):
    comfy_host.require_modern(host, "the model-family matrix (families of a current ComfyUI)")
    return importlib.import_module("comfyui_dyweight.nodes")


@pytest.fixture(scope="module")
def facts_module(dw):
    return importlib.import_module("comfyui_dyweight.host.model_facts")


@pytest.fixture(scope="module")
def built(dw, host):
    """name -> (Family, ModelPatcher, conditioning): each tiny model is built once per module; a family
    this host does not ship is skipped, saying so."""
    import comfy.supported_models

    cache = {}

    def get(name):
        if name not in cache:
            family = {**model_matrix.FAMILIES, **model_matrix.REFUSED_FAMILIES}[name]
            if not hasattr(comfy.supported_models, family.config):
                comfy_host._skip(f"{name}: the ComfyUI at {host.path} has no {family.config} model "
                                 "(a later ComfyUI has)")
            cache[name] = (family, model_matrix.build(family), model_matrix.conditioning(family, seed=1))
        return cache[name]

    return get


def stock(model, conditioning, family, sampler, scheduler, denoise=1.0, steps=STEPS):
    return comfy_host.sample_with_ksampler(model, *conditioning, model_matrix.empty_latent(family, 2), SEED, steps,
                                           CFG, sampler, scheduler, denoise=denoise)


def adams_bashforth_for(family, steps=STEPS):
    return adams_bashforth_preset(steps, family.prediction)


def close(ours, reference, model):
    """Equal up to float32 rounding, which grows with σ_max (zero-SNR models start at σ ≈ 4500)."""
    assert ours.shape == reference.shape
    assert torch.isfinite(ours).all()
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    tolerance = 1e-4 * reference.abs().max().item() + 4e-6 * sigma_max
    assert (ours - reference).abs().max().item() <= tolerance, ((ours - reference).abs().max().item(), tolerance)


@pytest.mark.parametrize("name", FAMILIES)
def test_labels(built, facts_module, name):
    family, model, _ = built(name)
    facts = facts_module.facts_from_patcher(model)
    print(f"\n{name}: {facts.family} {facts.prediction} σ {facts.sigma_min:.4g}..{facts.sigma_max:.4g} "
          f"σ_data {facts.sigma_data:g} {facts.noise_form} -> {facts_module.model_scheduler(facts)}")
    assert (facts.prediction, facts.sigma_data) == (family.prediction, family.sigma_data)


@pytest.mark.parametrize("name", FAMILIES)
def test_stock_ksampler_dyweight_is_ipndm(built, name):
    family, model, conditioning = built(name)
    ours = stock(model, conditioning, family, "dyweight", "simple", steps=PRESET_STEPS)
    close(ours, stock(model, conditioning, family, "ipndm", "simple", steps=PRESET_STEPS), model)
    assert ours[0].abs().max() > 0 and not torch.allclose(ours[0], ours[1])


@pytest.mark.parametrize("denoise", [1.0, 0.6])
@pytest.mark.parametrize("name", FAMILIES)
def test_ksampler_dyweight_node_with_adams_bashforth_is_ipndm(dw, built, name, denoise):
    family, model, (positive, negative) = built(name)
    result = dw.KSamplerDyWeight().sample(model, SEED, str(STEPS), CFG, positive, negative,
                                          model_matrix.empty_latent(family, 2), denoise=denoise,
                                          coefficients=adams_bashforth_for(family))
    ran = result["ui"]["dyweight_phi"][0]["schedule"]
    assert ran["kind"] == "comfy"
    close(result["result"][0]["samples"], stock(model, (positive, negative), family, "ipndm", ran["scheduler"],
                                                denoise=denoise), model)


@pytest.mark.parametrize("name", FAMILIES)
def test_sampler_custom_advanced_with_dyweight_nodes_is_ipndm(dw, built, facts_module, name):
    family, model, (positive, negative) = built(name)
    scheduler = facts_module.model_scheduler(facts_module.facts_from_patcher(model))
    output = sampler_custom_advanced(dw, model, family, positive, negative, adams_bashforth_for(family))
    close(output, stock(model, (positive, negative), family, "ipndm", scheduler), model)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_preset_runs_the_same_in_ksampler_dyweight_and_sampler_custom_advanced(dw, built, name):
    """No Φ connected: both paths pick the preset for (family, prediction, NFE 5), learned where one fits."""
    family, model, (positive, negative) = built(name)
    result = dw.KSamplerDyWeight().sample(model, SEED, str(STEPS), CFG, positive, negative,
                                          model_matrix.empty_latent(family, 2))
    ours = result["result"][0]["samples"]
    assert torch.isfinite(ours).all() and not torch.allclose(ours[0], ours[1])
    close(sampler_custom_advanced(dw, model, family, positive, negative, None), ours, model)


def sampler_custom_advanced(dw, model, family, positive, negative, coefficients):
    import comfy_extras.nodes_custom_sampler as custom

    (sampler,) = dw.DyWeightSampler().get_sampler(coefficients=coefficients)
    (sigmas,) = dw.DyWeightSigmas().get_sigmas(model, str(STEPS), coefficients=coefficients)
    (noise,) = custom.RandomNoise().get_noise(SEED)
    (guider,) = custom.CFGGuider().get_guider(model, positive, negative, CFG)
    output, _ = custom.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, model_matrix.empty_latent(family, 2))
    return output["samples"]


EXPECTED_SCHEDULER = {"sd15-zsnr": "normal", "stable-cascade-c": "simple", "stable-cascade-b": "simple"}


@pytest.mark.parametrize("name", FAMILIES)
def test_presets_run_on_the_family_schedule(dw, built, name):
    family, model, (positive, negative) = built(name)
    expected = EXPECTED_SCHEDULER.get(name, "simple" if family.prediction == "flow" else "karras")
    result = dw.KSamplerDyWeight().sample(model, SEED, str(PRESET_STEPS), CFG, positive, negative,
                                          model_matrix.empty_latent(family, 1))
    assert result["ui"]["dyweight_phi"][0]["schedule"] == {"kind": "comfy", "scheduler": expected}


@pytest.mark.parametrize("name", ["sdxl-edm", "cosmos-t2v", "cosmos-predict2"])
def test_analytical_first_step_is_refused_where_it_does_not_hold(built, facts_module, name):
    _, model, _ = built(name)
    facts = facts_module.facts_from_patcher(model)
    with pytest.raises(ValueError, match="analytical first step"):
        facts_module.bind_to_model(adams_bashforth(4, 3, afs=True), facts)
    assert facts_module.bind_to_model(adams_bashforth(4, 3), facts).prediction == facts.prediction


@pytest.mark.parametrize("name", ["sd15-eps", "sd15-v", "flux"])
def test_analytical_first_step_is_kept_where_it_holds(built, facts_module, name):
    _, model, _ = built(name)
    facts = facts_module.facts_from_patcher(model)
    assert facts_module.bind_to_model(adams_bashforth(4, 3, afs=True), facts).afs


def test_a_v_phi_from_sigma_data_one_is_refused_on_an_edm_model(built, facts_module):
    v_phi = adams_bashforth(4, 3, prediction="v")
    edm = facts_module.facts_from_patcher(built("sdxl-edm")[1])
    with pytest.raises(ValueError, match="σ_data = 1, but the model"):
        facts_module.bind_to_model(v_phi, edm)
    assert facts_module.bind_to_model(v_phi, facts_module.facts_from_patcher(built("sd15-v")[1])).prediction == "v"
    edm_phi = adams_bashforth(4, 3, prediction="v", training={"sigma_data": 0.5})
    assert facts_module.bind_to_model(edm_phi, edm).prediction == "v"


def test_lotus_d_is_refused_with_how_to_run_it(dw, built, facts_module):
    """Lotus-D (IMG_TO_IMG) is one model call at a fixed timestep: every DyWeight path says so instead of
    sampling, and its own one-step Euler workflow still runs."""
    family, model, (positive, negative) = built("lotus-d")
    refused = "image-to-image predictor.*DisableNoise"
    with pytest.raises(ValueError, match=refused):
        facts_module.facts_from_patcher(model)
    with pytest.raises(ValueError, match=refused):
        dw.KSamplerDyWeight().sample(model, SEED, str(STEPS), CFG, positive, negative,
                                     model_matrix.empty_latent(family))
    with pytest.raises(ValueError, match=refused):
        dw.DyWeightSigmas().get_sigmas(model, str(STEPS))
    with pytest.raises(ValueError, match=refused):
        stock(model, (positive, negative), family, "dyweight", "normal")
    one_step = stock(model, (positive, negative), family, "euler", "normal", steps=1)
    assert torch.isfinite(one_step).all()
