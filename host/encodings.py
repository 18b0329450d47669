"""Prompt encodings: CLIPTextEncode's CONDITIONING, cached next to the teacher pairs.

A run over thousands of prompts (arXiv 2603.11607 distils FLUX on 5,000 COCO captions) would spend
most of a rerun or a resume in the text encoder; the teacher pairs are cached, so the encodings are too.
Each prompt's encoding is one safetensors file in ``<cache>/encodings/``, named by the hash of its key:

* the text encoder's identity (:class:`EncodingCache`): its class, the names, shapes and dtypes of its
  weights, its patches (LoRAs), the CLIP layer it stops at, its device and the torch version, and a
  SHA-256 of every weight the encodings *depend on*, as ComfyUI loads it for this CLIP (patches
  applied). Which weights those are is followed through every torch operation while it encodes and
  recorded beside the encodings (``used-weights-*.json``): a checkpoint may hold weights whose result the
  encoder drops, and ComfyUI leaves those it does not find in the file uninitialised (SD1.5's CLIP-L
  text projection), so hashing every weight would give one checkpoint a new identity on every load;
* the prompt's tokens (``clip.tokenize``), not its text: they carry the tokenizer's options, prompt
  weights and textual-inversion embeddings, so a changed embedding file changes the key too.

The key is stored in the file's metadata and checked on load, with the layout of the conditioning
(its tensors by name and device, its plain values as JSON); only tensors and None/bool/int/float/str are
stored, which restore exactly — a prompt whose conditioning holds anything else (e.g. hooks) is encoded
every time. A file that is unreadable or does not match is reported, encoded again and replaced. Files
are written atomically and never unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from ..atomic import atomic_path, write_text_atomic

LOG = logging.getLogger("comfyui_dyweight")
FORMAT = "dyweight-encoding/1"
METADATA_KEY = "dyweight_encoding"
#: Extras values stored as JSON: exactly these types round-trip unchanged (no subclasses).
PLAIN_TYPES = (type(None), bool, int, float, str)


class NotStorable(ValueError):
    """A value the encoding cache cannot restore exactly (the prompt is encoded every time instead)."""


def encode_prompt(clip, text: str) -> list:
    """The CONDITIONING of ``text``, exactly as ComfyUI's CLIPTextEncode node makes it."""
    _check_clip(clip)
    return encode_tokens(clip, clip.tokenize(text))


def encode_tokens(clip, tokens) -> list:
    """The CONDITIONING of tokenized text, as CLIPTextEncode encodes its tokens.

    Current hosts: ``encode_from_tokens_scheduled`` (hooks, pooled output and the model's extra keys);
    2024 hosts: ``encode_from_tokens(return_pooled=True)`` → ``[[cond, {"pooled_output": pooled}]]``.
    """
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@dataclasses.dataclass
class EncodedPrompts:
    """The CONDITIONING per prompt, in order, and how many came from the cache."""

    conditionings: list
    reused: int


def encode_prompts(clip, texts: Sequence[str], cache_dir=None) -> EncodedPrompts:
    """The CONDITIONING of every text (:func:`encode_prompt`), read from ``cache_dir/encodings`` where a
    file for this encoder and these tokens exists, encoded (and stored there) otherwise."""
    _check_clip(clip)
    cache = None if cache_dir is None else EncodingCache(clip, Path(cache_dir) / "encodings")
    conditionings, reused = [], 0
    for text in texts:
        tokens = clip.tokenize(text)
        conditioning = None if cache is None else cache.restored(tokens)
        if conditioning is None:
            conditioning = encode_tokens(clip, tokens) if cache is None else cache.encoded(tokens, text)
        else:
            reused += 1
        conditionings.append(conditioning)
    return EncodedPrompts(conditionings, reused)


class EncodingCache:
    """The encodings of one CLIP in ``folder``: :meth:`restored` reads a prompt's, :meth:`encoded` makes
    and stores one. Nothing is cached when hooks schedule the encoding or its inputs cannot be told."""

    def __init__(self, clip, folder: Path):
        self.clip, self.folder = clip, folder
        self.structure = _structure(clip)
        self.record = None if self.structure is None else \
            folder / f"used-weights-{_hashed(self.structure)[:24]}.json"
        self.used = self._read_record()
        self.identity = self._identity()

    def restored(self, tokens) -> Optional[list]:
        path, key = self._entry(tokens)
        return None if path is None else _restored(path, key)

    def encoded(self, tokens, text: str) -> list:
        """Encode ``tokens``, note the weights the encoding depends on, and store it under the identity
        that covers them."""
        if self.structure is None:
            return encode_tokens(self.clip, tokens)
        self.clip.load_model()  # as the encode does: the weights it uses are the ones loaded now
        with _WeightDependencies(self.clip.patcher.model) as dependencies:
            conditioning = encode_tokens(self.clip, tokens)
        used = dependencies.of(conditioning)
        if not used <= set(self.used or ()):
            self.used = sorted(used | set(self.used or ()))
            write_text_atomic(self.record, json.dumps({"structure": self.structure, "used": self.used}))
            self.identity = self._identity()
        path, key = self._entry(tokens)
        if path is not None:
            _store(path, key, text, conditioning)
        return conditioning

    def _entry(self, tokens):
        """(file, key) of the prompt with ``tokens``, or ``(None, None)`` when it is not cached."""
        if self.identity is None:
            return None, None
        try:
            key = {"encoder": self.identity, "tokens": exact_digest(tokens)}
        except NotStorable:
            return None, None
        return self.folder / f"{_hashed(key)[:32]}.safetensors", key

    def _read_record(self) -> Optional[list]:
        """The weights this encoder's encodings were seen to depend on (``None``: not recorded yet, or
        unreadable)."""
        if self.record is None or not self.record.is_file():
            return None
        try:
            document = json.loads(self.record.read_text(encoding="utf-8"))
            if document["structure"] == self.structure and all(isinstance(name, str) for name in document["used"]):
                return list(document["used"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            LOG.warning("DyWeight: %s is unreadable (%s); the next encoding records it again", self.record, error)
        return None

    def _identity(self) -> Optional[dict]:
        if self.used is None:
            return None
        self.clip.load_model()
        weights = hashlib.sha256()
        state = self.clip.patcher.model.state_dict()
        try:
            for name in self.used:
                weights.update(f"{name}{state[name].dtype}{tuple(state[name].shape)}".encode())
                weights.update(_tensor_bytes(state[name]))
        except (KeyError, RuntimeError, NotImplementedError):  # e.g. a weight on the meta device
            return None
        return {**self.structure, "weights": weights.hexdigest()}


def _structure(clip) -> Optional[dict]:
    """The encoder's identity but for its weights' values (``None`` when it cannot be cached)."""
    patcher = clip.patcher
    if getattr(patcher, "forced_hooks", None) is not None or getattr(clip, "apply_hooks_to_conds", None):
        return None
    clip.load_model()  # applies this CLIP's patches in place (and takes back another clone's)
    module = patcher.model
    try:
        tensors = exact_digest([[name, str(tensor.dtype), list(tensor.shape)]
                                for name, tensor in module.state_dict().items()])
        patches = exact_digest(getattr(patcher, "patches", {}))
    except NotStorable:
        return None
    return {"format": FORMAT, "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "tensors": tensors, "patches": patches, "layer": getattr(clip, "layer_idx", None),
            "lowvram": [bool(getattr(module, "model_lowvram", False)),
                        int(getattr(module, "lowvram_patch_counter", 0))],
            "device": str(patcher.load_device), "torch": torch.__version__}


class _WeightDependencies(TorchFunctionMode):
    """Within the block, follows which weights of ``module`` each tensor was computed from, through
    every torch operation (ComfyUI's casts, the layers, the pooling); :meth:`of` then names the weights
    a result depends on. A weight that is computed with but does not reach the result (SD1.5's text
    projection, whose output ComfyUI drops) is not among them."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.sources = {id(tensor): frozenset([name]) for name, tensor in module.state_dict(keep_vars=True).items()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        sources = frozenset().union(*self._found((args, tuple(kwargs.values()))))
        for tensor in _tensors(result):  # an in-place op's result is among its inputs: it keeps its sources
            self.sources[id(tensor)] = sources
        return result

    def _found(self, values):
        return [self.sources.get(id(tensor), frozenset()) for tensor in _tensors(values)]

    def of(self, value) -> set:
        return set().union(*self._found(value))


def _tensors(value):
    """The tensors in ``value`` (nested lists, tuples and dict values)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def exact_digest(value) -> str:
    """SHA-256 of tensors (every byte), containers and plain values; :class:`NotStorable` for anything else."""
    digest = hashlib.sha256()

    def feed(item):
        if type(item) is torch.Tensor:
            digest.update(f"tensor{item.dtype}{tuple(item.shape)}".encode())
            digest.update(_tensor_bytes(item))
        elif isinstance(item, dict):
            digest.update(f"dict{len(item)}".encode())
            for key in sorted(item, key=repr):
                feed(key)
                feed(item[key])
        elif isinstance(item, (list, tuple)):
            digest.update(f"{type(item).__name__}{len(item)}".encode())
            for element in item:
                feed(element)
        elif type(item) in PLAIN_TYPES:
            digest.update(f"{type(item).__name__}:{item!r};".encode())
        else:
            raise NotStorable(f"cannot digest a {type(item).__name__}")

    feed(value)
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor):
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def _check_clip(clip) -> None:
    if clip is None:
        raise ValueError("no text encoder to encode the prompts with (a checkpoint without CLIP needs "
                         "separate text encoder files)")


def _hashed(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _store(path: Path, key: dict, text: str, conditioning) -> None:
    try:
        tensors, layout = _flattened(conditioning)
    except NotStorable as why:
        LOG.info("DyWeight: the encoding of %r is not cached (%s)", text, why)
        return
    document = {"key": key, "prompt": text, "layout": layout}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})


def _flattened(conditioning):
    """(tensors by name, JSON layout) of a CONDITIONING ``[[tensor, {extras}], …]``."""
    tensors, layout = {}, []

    def tensor_entry(tensor, name: str) -> dict:
        if type(tensor) is not torch.Tensor or tensor.layout != torch.strided:
            raise NotStorable(f"{name} is a {type(tensor).__name__}, not a plain tensor")
        tensors[name] = tensor.detach().to("cpu").contiguous()
        return {"tensor": name, "device": str(tensor.device)}

    if type(conditioning) is not list:
        raise NotStorable(f"the conditioning is a {type(conditioning).__name__}, not a list")
    for index, entry in enumerate(conditioning):
        if type(entry) is not list or len(entry) != 2 or type(entry[1]) is not dict:
            raise NotStorable(f"conditioning entry {index} is not [tensor, dict]")
        extras = {}
        for name, value in entry[1].items():
            if type(name) is not str:
                raise NotStorable(f"conditioning entry {index} has a key {name!r} that is not a string")
            if type(value) in PLAIN_TYPES:
                extras[name] = {"value": value}
            else:
                extras[name] = tensor_entry(value, f"{index}.{name}")
        layout.append({"cond": tensor_entry(entry[0], str(index)), "extras": extras})
    return tensors, layout


def _restored(path: Path, key: dict) -> Optional[list]:
    """The CONDITIONING stored at ``path`` for ``key``; ``None`` (after saying why) if it is missing,
    unreadable or another key's."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as stored:
            document = json.loads((stored.metadata() or {})[METADATA_KEY])
            if document["key"] != key:
                raise ValueError("it holds the encoding of another prompt or text encoder")

            def tensor(entry: dict) -> torch.Tensor:
                return stored.get_tensor(entry["tensor"]).to(entry["device"])

            return [[tensor(entry["cond"]),
                     {name: extra["value"] if "value" in extra else tensor(extra)
                      for name, extra in entry["extras"].items()}]
                    for entry in document["layout"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, AssertionError,
            SafetensorError) as error:
        LOG.warning("DyWeight: the cached prompt encoding %s is unusable (%s: %s); encoding the prompt again "
                    "and replacing it", path, type(error).__name__, error)
        return None
