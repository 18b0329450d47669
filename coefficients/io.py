"""The coefficient file (format ``dyweight/1``): one ``.safetensors`` per Φ, strictly validated, written atomically.

Tensors: ``weights`` [N, K], ``time_scale`` [N], optional ``sigmas`` [N+1] (float32; float64 for converted
third-party tables). Metadata: one JSON document under the key ``dyweight``; a document without
``solver``/``combine``/``source`` (files written before the DSS family) reads as a DyWeight Φ with gradient
combination. Files are parsed with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from ..atomic import atomic_path
from .errors import CoefficientFileError

FORMAT = "dyweight/1"
METADATA_KEY = "dyweight"
TENSOR_NAMES = ("weights", "time_scale", "sigmas")
_REQUIRED_FIELDS = ("format", "nfe", "order", "afs", "divisor", "schedule", "prediction", "model_family",
                    "sigma_min", "sigma_max", "cfg", "training")
_PICKLE_OR_TORCH_SAVE = (b"\x80", b"PK\x03\x04")
#: Tensor types a Φ may be stored in (float8 has no finiteness check in torch; integers are no weights).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: The metadata document is a few levels deep (training → validation → figures); far deeper is an attack.
MAX_METADATA_DEPTH = 32


def write_coefficient_file(path, tensors: dict, document: dict) -> None:
    """Write a Φ's ``tensors`` (``weights``, ``time_scale``[, ``sigmas``]) and its metadata ``document``
    to ``path`` atomically (temporary file + rename)."""
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})


def read_coefficient_file(path) -> tuple:
    """``(tensors, document)`` of a coefficient file, checked as far as a file can be: the safetensors
    layout, the metadata document, the tensor set, dtypes, shapes and finiteness
    (:meth:`Coefficients.load` then checks the Φ they make).

    Raises :class:`CoefficientFileError` whose ``reason`` tells a missing file, a truncated file, a
    pickle or ``torch.save`` archive, another non-safetensors file, missing or malformed metadata, an
    unknown format version, wrong tensor shapes, or non-finite values apart.
    """
    path = Path(path)
    if not path.is_file():
        raise CoefficientFileError(path, "missing", "no such file")
    raw = path.read_bytes()
    header = _read_header(path, raw)
    document = _read_document(path, header)
    try:
        tensors = load_safetensors_bytes(raw)
    except Exception as error:  # safetensors raises its own error types for corrupt payloads
        raise CoefficientFileError(path, "invalid", f"safetensors could not read it ({error})") from error
    _check_tensors(path, tensors, document)
    return tensors, document


def _read_header(path: Path, raw: bytes) -> dict:
    # A safetensors header is JSON: byte 8 is "{" even when the length before it starts with a pickle's b"\x80"
    # (and even in a truncated download, which is reported as truncated, not as a pickle).
    if raw[8:9] != b"{" and raw.startswith(_PICKLE_OR_TORCH_SAVE):
        raise CoefficientFileError(
            path, "pickle",
            "this is a Python pickle / torch.save archive, not a safetensors file. DyWeight never unpickles "
            "files (they can run code); convert released coefficients with "
            "`python -m comfyui_dyweight import`")
    if len(raw) < 8:
        raise CoefficientFileError(path, "truncated", f"the file is only {len(raw)} bytes long (truncated?)")
    (header_size,) = struct.unpack("<Q", raw[:8])
    if header_size > len(raw) - 8:
        if raw[8:9] == b"{" or header_size < (1 << 24):
            raise CoefficientFileError(path, "truncated", "the file ends inside its header (truncated download?)")
        raise CoefficientFileError(path, "not_safetensors", "this is not a safetensors file")
    header = _parse_json(path, raw[8:8 + header_size])
    if not isinstance(header, dict):
        raise CoefficientFileError(path, "not_safetensors", "this is not a safetensors file (bad header)")
    data_size = len(raw) - 8 - header_size
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(value) for value in offsets)
                and offsets[0] <= offsets[1]):
            raise CoefficientFileError(
                path, "not_safetensors", f"this is not a safetensors file (bad header entry for tensor {name[:80]!r})")
        ends.append(offsets[1])
    if ends and max(ends) > data_size:
        raise CoefficientFileError(
            path, "truncated", f"the tensor data stops at byte {data_size} of {max(ends)} (truncated download?)")
    return header


def _parse_json(path: Path, text) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, over-long integers, deep nesting
        raise CoefficientFileError(path, "not_safetensors", "this is not a safetensors file (bad header)") from None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _nesting_depth(document) -> int:
    """How many containers deep ``document`` goes (iteratively: no recursion for hostile input)."""
    deepest, pending = 0, [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_METADATA_DEPTH:
                pending.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def _read_document(path: Path, header: dict) -> dict:
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CoefficientFileError(
            path, "not_safetensors", "this is not a safetensors file (its __metadata__ is not a string map)")
    if METADATA_KEY not in metadata:
        raise CoefficientFileError(
            path, "metadata_missing",
            f"it has no '{METADATA_KEY}' metadata, so it is not a DyWeight coefficient file (a model checkpoint "
            "in the wrong folder?)")
    if not isinstance(metadata[METADATA_KEY], str):
        raise CoefficientFileError(path, "metadata_malformed", f"its '{METADATA_KEY}' metadata is not a string")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as error:  # JSONDecodeError, over-long integers, deep nesting
        problem = "nested too deeply" if isinstance(error, RecursionError) else error
        raise CoefficientFileError(path, "metadata_malformed", f"its metadata is not valid JSON ({problem})") from None
    if not isinstance(document, dict):
        raise CoefficientFileError(path, "metadata_malformed", "its metadata must be a JSON object")
    if _nesting_depth(document) > MAX_METADATA_DEPTH:
        raise CoefficientFileError(
            path, "metadata_malformed", f"its metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
    if document.get("format") != FORMAT:
        raise CoefficientFileError(
            path, "format_version",
            f"format {document.get('format')!r} is not one this version reads ({FORMAT!r}); "
            "update ComfyUI-DyWeight or re-export the file")
    missing = [name for name in _REQUIRED_FIELDS if name not in document]
    if missing:
        raise CoefficientFileError(path, "metadata_malformed", f"its metadata lacks {', '.join(missing)}")
    return document


def _check_tensors(path: Path, tensors: dict, document: dict) -> None:
    unknown = sorted(set(tensors) - set(TENSOR_NAMES))
    absent = [name for name in ("weights", "time_scale") if name not in tensors]
    if absent or unknown:
        raise CoefficientFileError(
            path, "shape", f"expected tensors weights, time_scale[, sigmas]; missing {absent}, unexpected {unknown}")
    weights, time_scale = tensors["weights"], tensors["time_scale"]
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise CoefficientFileError(
                path, "shape", f"tensor '{name}' must be float32 (or float16, bfloat16, float64), is {tensor.dtype}")
        if not torch.isfinite(tensor).all():
            raise CoefficientFileError(path, "non_finite", f"tensor '{name}' holds NaN or Inf")
    if weights.ndim != 2 or time_scale.shape != (weights.shape[0],) or (
            "sigmas" in tensors and tensors["sigmas"].shape != (weights.shape[0] + 1,)):
        shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
        raise CoefficientFileError(
            path, "shape", f"tensor shapes {shapes} do not fit together (weights [N, K], time_scale [N], sigmas [N+1])")
    if document["order"] != weights.shape[1] or document["nfe"] != weights.shape[0] - int(bool(document["afs"])):
        raise CoefficientFileError(
            path, "shape", f"metadata says NFE {document['nfe']}, order {document['order']} but the weights are "
                           f"{tuple(weights.shape)}")
