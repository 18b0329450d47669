"""Training through ComfyUI: the adapter and the Train DyWeight Coefficients node on real host models.

Models are built under torch.inference_mode(), as ComfyUI's loader nodes build them, so the tests
fail if the trainer cannot back-propagate through inference-mode weights.
"""

import importlib
from pathlib import Path

import pytest
import torch

import comfy_host
from comfyui_dyweight.coefficients import Coefficients

SMALL = dict(teacher="dpmpp_2m", teacher_steps=10, pairs=12, iterations=15, batch_size=4)


@pytest.fixture(scope="module")
def inference_mode_model(host):
    with torch.inference_mode():
        return comfy_host.tiny_sd15_model(seed=0)


@pytest.fixture(scope="module")
def dw(host):
    return importlib.import_module("comfyui_dyweight.nodes")


@pytest.fixture(scope="module")
def adapter(host):
    return importlib.import_module("comfyui_dyweight.host.training_target")


def two_prompt_target(adapter, model):
    conditionings = [comfy_host.tiny_sd15_conditioning(batch=1, seed=seed) for seed in (1, 2)]
    return adapter.ComfyTarget(model, conditionings, cfg=3.0, latent_shape=(4, 8, 8))


def test_adapter_distils_a_phi_that_beats_its_initialisation_and_samples(adapter, dw, inference_mode_model, tmp_path):
    target = two_prompt_target(adapter, inference_mode_model)
    result = adapter.distill_for_comfy(target, cache_dir=tmp_path, progress=lambda event: None, nfe=[3], **SMALL)
    row = result.table[0]
    assert row["rmse"] < row["init"], row
    assert set(row["baselines"]) >= {"euler", "dpmpp_2m"}
    phi = result.coefficients[3]
    assert (phi.model_family, phi.prediction, phi.cfg) == ("SD15", "eps", 3.0)
    assert phi.schedule == {"kind": "comfy", "scheduler": "karras"}
    assert phi.training["teacher"] == "comfyui:dpmpp_2m"

    phi.save(tmp_path / "trained.safetensors")
    positive, negative = target.conditionings[0]
    sampled = dw.KSamplerDyWeight().sample(inference_mode_model, 1, "3", 3.0, positive, negative,
                                           comfy_host.empty_latent(1, 64, 64),
                                           coefficients=Coefficients.load(tmp_path / "trained.safetensors"))
    assert torch.isfinite(sampled["result"][0]["samples"]).all()

    again = adapter.distill_for_comfy(target, cache_dir=tmp_path, progress=lambda event: None, nfe=[3],
                                      **{**SMALL, "iterations": 1})
    assert again.timings["teacher_cache_hit"]


def test_each_row_is_denoised_under_its_own_prompt_as_a_stock_sampler_does(adapter, inference_mode_model):
    """The trainer's denoiser on a batch mixing three prompts, row by row against the stock sampling
    path: one Euler step to σ = 0 (``sample_custom``) returns the guided x0 of its prompt; with a CFG
    range each row takes its own CFG."""
    import comfy.sample
    import comfy.samplers

    conditionings = [comfy_host.tiny_sd15_conditioning(batch=1, seed=seed) for seed in (1, 2, 3)]
    target = adapter.ComfyTarget(inference_mode_model, conditionings, cfg=4.0, latent_shape=(4, 8, 8),
                                 cfg_range={"kind": "cfg", "min": 1.0, "max": 8.0})
    labels, guidance = torch.tensor([2, 0, 1, 2]), torch.tensor([1.5, 4.0, 8.0, 1.5], dtype=torch.float64)
    unit = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor(3.0)

    def body(denoise, _):
        with torch.no_grad():  # the model's weights are inference tensors (as the loader nodes make them)
            return denoise(sigma * unit, sigma, condition=labels, guidance=guidance)

    ours = adapter.with_comfy_denoisers(target, body)
    for row, label in enumerate(labels.tolist()):
        positive, negative = conditionings[label]
        stock = comfy.sample.sample_custom(inference_mode_model, unit[row:row + 1], float(guidance[row]),
                                           comfy.samplers.sampler_object("euler"), torch.stack([sigma, sigma * 0]),
                                           positive, negative, torch.zeros_like(unit[:1]), disable_pbar=True)
        expected = inference_mode_model.model.process_latent_in(stock)
        assert torch.allclose(ours[row:row + 1], expected, atol=1e-5), (row, label)
    assert not torch.allclose(ours[0], ours[3])  # same prompt, other noise: the rows were not mixed up


def test_a_flux_guidance_range_sets_each_rows_guidance_as_the_flux_guidance_node_does(adapter, host):
    """With a ``guidance`` range each row is denoised with its own FLUX guidance set on the positive
    conditioning, as the FluxGuidance node sets it, at the target's CFG: row by row against the stock
    sampling path (one Euler step to σ = 0)."""
    import comfy.sample
    import comfy.samplers
    import node_helpers

    with torch.inference_mode():  # as the loader nodes build it
        model = comfy_host.tiny_flux_model(seed=0)
    positive, negative = comfy_host.tiny_flux_conditioning(batch=1, seed=1)
    target = adapter.ComfyTarget(model, [(positive, negative)], cfg=1.0, latent_shape=(16, 8, 8),
                                 cfg_range={"kind": "guidance", "min": 1.0, "max": 6.0})
    guidance = torch.tensor([1.0, 6.0], dtype=torch.float64)
    unit = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(5)).expand(2, -1, -1, -1)
    sigma = torch.tensor(0.6)

    def body(denoise, _):
        with torch.no_grad():
            return denoise(sigma * unit, sigma, condition=torch.tensor([0, 0]), guidance=guidance)

    ours = adapter.with_comfy_denoisers(target, body)
    for row, value in enumerate(guidance.tolist()):
        guided = node_helpers.conditioning_set_values(positive, {"guidance": value})
        stock = comfy.sample.sample_custom(model, unit[row:row + 1], 1.0, comfy.samplers.sampler_object("euler"),
                                           torch.stack([sigma, sigma * 0]), guided, negative,
                                           torch.zeros_like(unit[:1]), disable_pbar=True)
        expected = model.model.process_latent_in(stock)
        assert torch.allclose(ours[row:row + 1], expected, atol=1e-5), row
    assert not torch.allclose(ours[0], ours[1])  # same noise, other guidance: it reached the model


def test_a_cfg_range_trains_one_phi_that_records_it_and_reports_its_ends(adapter, inference_mode_model, tmp_path):
    target = two_prompt_target(adapter, inference_mode_model)
    target.cfg_range = {"kind": "cfg", "min": 2.0, "max": 5.0}
    result = adapter.distill_for_comfy(target, cache_dir=tmp_path, progress=lambda event: None, nfe=[3],
                                       **{**SMALL, "iterations": 3})
    assert result.coefficients[3].cfg == {"kind": "cfg", "min": 2.0, "max": 5.0}
    assert 2.0 <= float(result.pairs.guidance.min()) < float(result.pairs.guidance.max()) <= 5.0
    assert [point["guidance"] for point in result.table[0]["guidance"]] == [2.0, 3.5, 5.0]


def test_flux_trains_with_and_without_checkpointing_and_its_gradient_is_the_finite_difference(adapter, host,
                                                                                              tmp_path):
    """ComfyUI's FLUX blocks add their residuals in place (``x += …``) after a LayerNorm saved ``x``: a plain
    backward pass through them fails and torch's checkpointing differentiates the modified tensor (14% off
    along the direction below). One training step runs either way; the gradients in Φ (W and log s) that a
    step takes agree with checkpointing and without, and along a change of W the loss's central finite
    difference (no autograd in the oracle) is the gradient's."""
    import dataclasses

    import model_matrix
    from comfyui_dyweight.coefficients import adams_bashforth_preset
    from comfyui_dyweight.trainer import DistillConfig
    from comfyui_dyweight.trainer.model_calls import differentiable_calls
    from comfyui_dyweight.trainer.optimise import batch_gradients
    from comfyui_dyweight.trainer.pairs import PairSet
    from comfyui_dyweight.trainer.students import DyWeightStudent

    comfy_host.require_modern(host, "the tiny FLUX model")
    family = model_matrix.FAMILIES["flux"]
    with torch.inference_mode():  # as the loader nodes build it
        model = model_matrix.build(family)
    target = adapter.ComfyTarget(model, [model_matrix.conditioning(family, seed=seed) for seed in (1, 2)], cfg=1.0,
                                 latent_shape=family.latent)
    for checkpointing in (False, True):
        result = adapter.distill_for_comfy(target, cache_dir=tmp_path, progress=lambda event: None, nfe=[3],
                                           teacher="euler", teacher_steps=6, pairs=5, iterations=1, batch_size=4,
                                           checkpointing=checkpointing)
        assert result.coefficients[3].weights.isfinite().all()

    def gradients(source):
        sigmas = source.schedule(3)
        template = dataclasses.replace(adams_bashforth_preset(3, "flow"), divisor="net_sigma", sigmas=sigmas.float())
        student = DyWeightStudent(template, DyWeightStudent.initial_state(template), sigmas)
        noise = torch.cat([source.noise(seed) for seed in range(2)])
        batch = PairSet(torch.arange(2), noise, torch.randn(noise.shape, generator=torch.Generator().manual_seed(3)),
                        labels=torch.tensor([0, 1]))
        config = DistillConfig(batch_size=2, micro_batch_size=1, sampling_batch_size=2)
        by_autograd = {on: batch_gradients(student, differentiable_calls(source.denoise, on), batch, config)[1]
                       for on in (False, True)}
        # a change of W whose rows sum to zero moves no time of the trajectory (t̃ follows the row sums, Eq. 8),
        # so the loss is a smooth function of the states alone along it (the model's time embedding oscillates)
        change = torch.randn(student.weights.shape, generator=torch.Generator().manual_seed(4)) * student.mask
        change = (change - change.sum(1, keepdim=True) / student.mask.sum(1, keepdim=True)) * student.mask

        def loss_at(step):
            with torch.no_grad():
                student.weights.add_(step * change)
                loss = float(student.loss(source.denoise, batch))
                student.weights.sub_(step * change)
                return loss

        finite_difference = (loss_at(0.1) - loss_at(-0.1)) / 0.2
        return by_autograd, change, finite_difference

    by_autograd, change, finite_difference = adapter.open_comfy_source(target, gradients)
    for stored, recomputed in zip(by_autograd[False], by_autograd[True]):
        assert torch.allclose(stored, recomputed, rtol=1e-5, atol=1e-7) and stored.abs().sum() > 0
    assert abs(finite_difference) > 1e-4
    directional = float((by_autograd[True][0] * change).sum())
    assert directional == pytest.approx(finite_difference, rel=5e-3), (directional, finite_difference)


@pytest.fixture(scope="module")
def checkpoint(host, tmp_path_factory):
    """The tiny real checkpoint, loaded the way CheckpointLoaderSimple loads it (inference mode)."""
    import comfy.sd

    folder = tmp_path_factory.mktemp("ckpt")
    name = comfy_host.write_tiny_checkpoint(folder)
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(folder / "checkpoints" / name),
                                                                  output_vae=False, output_clip=True)
    return model, clip


@pytest.fixture
def dyweight_folder(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "dyweight", ([str(tmp_path)], {".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


def train_node_inputs(model, clip, **changes):
    inputs = dict(model=model, clip=clip, prompts="a red cube\n\na blue sphere\n", negative="blurry", cfg=4.0,
                  width=64, height=64, steps=3, pairs=8, iterations=6, teacher_sampler="euler", teacher_steps=10,
                  seed=0, file_name="tiny", unique_id="42")
    inputs.update(changes)
    return inputs


def test_train_node_saves_phi_reports_progress_and_feeds_ksampler(dw, checkpoint, dyweight_folder):
    from comfyui_dyweight.nodes.training_events import training_state

    model, clip = checkpoint
    with torch.inference_mode():  # as ComfyUI executes nodes
        output = dw.DyWeightTrain().train(**train_node_inputs(model, clip))
    phi = output["result"][0]
    saved = Coefficients.load(dyweight_folder / "tiny-nfe3.safetensors")
    assert torch.equal(saved.weights, phi.detached().weights)
    assert saved.training["prompts"] == ["a red cube", "a blue sphere"] and saved.cfg == 4.0
    assert "tiny-nfe3.safetensors" in dw.DyWeightLoadCoefficients.INPUT_TYPES()["required"]["coefficients"][0]
    state = training_state("42")
    assert state["status"] == "done" and state["table"]
    assert "DyWeight" in output["ui"]["text"][0] and "| 3 |" in output["ui"]["text"][0]  # the validation table

    import nodes as host_nodes
    positive = host_nodes.CLIPTextEncode().encode(clip, "a red cube")[0] if hasattr(host_nodes, "CLIPTextEncode") else None
    with torch.inference_mode():
        sampled = dw.KSamplerDyWeight().sample(model, 0, "3", 4.0, positive, positive,
                                               comfy_host.empty_latent(1, 64, 64), coefficients=phi)
    assert torch.isfinite(sampled["result"][0]["samples"]).all()


def test_train_node_batches_bound_what_the_model_sees(dw, checkpoint, dyweight_folder):
    model, clip = checkpoint
    model = model.clone()
    rows = {True: [], False: []}  # the U-Net's batch sizes, with / without gradients

    def recording(apply_model, arguments):
        rows[torch.is_grad_enabled()].append(arguments["input"].shape[0])
        return apply_model(arguments["input"], arguments["timestep"], **arguments["c"])

    model.set_model_unet_function_wrapper(recording)
    with torch.inference_mode():
        dw.DyWeightTrain().train(**train_node_inputs(model, clip, prompts="a red cube", pairs=10, iterations=2,
                                                     file_name="batches", micro_batch=2, sampling_batch=3))
    joined = 2  # with CFG, ComfyUI runs cond and uncond as one U-Net batch (memory permitting)
    assert max(rows[True]) == 2 * joined  # micro-batches of 2 latents per backward pass
    assert max(rows[False]) == 3 * joined  # the teacher and the held-out checks: 3 latents per call


def test_cancel_keeps_the_best_phi_so_far(dw, checkpoint, dyweight_folder, monkeypatch):
    import comfy.model_management

    model, clip = checkpoint
    events = []
    original = dw.train_node.TrainingProgress.__call__

    def record(progress, event):
        events.append(event["kind"])
        original(progress, event)

    monkeypatch.setattr(dw.train_node.TrainingProgress, "__call__", record)
    monkeypatch.setattr(comfy.model_management, "processing_interrupted", lambda: events.count("train") >= 4)
    with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
        dw.DyWeightTrain().train(**train_node_inputs(model, clip, iterations=50, file_name="cancelled", unique_id="43"))
    kept = Coefficients.load(dyweight_folder / "cancelled-nfe3.safetensors")
    assert kept.nfe == 3
    assert not list(Path(dyweight_folder).glob("*.partial"))


def test_train_node_refuses_bad_input_with_clear_messages(dw, checkpoint, dyweight_folder):
    model, clip = checkpoint
    with pytest.raises(ValueError, match="at least one prompt"):
        dw.DyWeightTrain().train(**train_node_inputs(model, clip, prompts="\n  \n"))
    with pytest.raises(ValueError, match="without folders"):
        dw.DyWeightTrain().train(**train_node_inputs(model, clip, file_name="../escape"))


def test_train_node_takes_a_cfg_range(dw, checkpoint, dyweight_folder):
    model, clip = checkpoint
    with torch.inference_mode():
        dw.DyWeightTrain().train(**{**train_node_inputs(model, clip), "cfg_max": 6.0, "iterations": 1})
    saved = Coefficients.load(dyweight_folder / "tiny-nfe3.safetensors")
    assert saved.cfg == {"kind": "cfg", "min": 4.0, "max": 6.0}
