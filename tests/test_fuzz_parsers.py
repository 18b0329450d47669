"""Fuzzing the two parsers of untrusted files with hypothesis: any input gives a valid Φ or the pack's own error.

* the coefficient file loader (``Coefficients.load``): arbitrary bytes; valid files with flipped bytes,
  rewritten headers (offsets, shapes, dtypes, the length prefix), arbitrary metadata documents and
  field values, every tensor dtype safetensors knows, zero-size and non-finite tensors, deep nesting;
* the release importer (``import_release_file``): arbitrary bytes; valid snapshot pickles and FLUX
  ``torch.save`` archives with flipped bytes; snapshots and checkpoints whose fields hold any plain value
  the restricted unpickler rebuilds (tensors and numpy arrays of any dtype and shape, huge or non-finite
  numbers, strings, containers).

Runs are deterministic (``derandomize``) and bounded, so they fit the normal test run.
"""

import dataclasses
import json
import math
import os
import pickle
import struct
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors_bytes

from comfyui_dyweight.coefficients import Coefficients, CoefficientError, CoefficientFileError
from comfyui_dyweight.coefficients.io import METADATA_KEY
from comfyui_dyweight.release.convert import ReleaseImportError, import_release_file
from comfyui_dyweight.release.safe_unpickle import UnsafePickleError
from test_coefficient_file import trained_like_phi
from release_files import FLUX_ROWS, PIXEL_ROWS, PersistentObject, release_modules, window_mask, write_flux

# DYWEIGHT_FUZZ_EXAMPLES lowers the count where the suite runs many times over (scripts/mutation_test.sh).
FUZZ = settings(max_examples=int(os.environ.get("DYWEIGHT_FUZZ_EXAMPLES", 300)), deadline=None, derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


# --- the coefficient file loader ------------------------------------------------------------------------

def load_bytes(folder: Path, data: bytes):
    """Load ``data`` as a coefficient file: a usable Φ, or ``None`` after the loader's own error."""
    path = folder / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        phi = Coefficients.load(path)
    except CoefficientFileError as error:
        assert str(path) in str(error) and error.reason
        return None
    phi.summary()  # what the load node and the routes show
    json.dumps(phi.metadata())
    dataclasses.replace(phi)  # validates again
    return phi


def valid_file():
    phi = trained_like_phi()
    tensors = {"weights": phi.weights, "time_scale": phi.time_scale, "sigmas": phi.sigmas}
    return save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(phi.metadata())})


def split(data: bytes):
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


def join(header, payload: bytes, prefix=None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text) if prefix is None else prefix) + text + payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
FIELDS = ("format", "nfe", "order", "afs", "divisor", "schedule", "prediction", "model_family", "sigma_min",
          "sigma_max", "cfg", "training")
SAFETENSORS_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "BOOL",
                      "C64", "XYZ", 7, None)


@FUZZ
@given(data=st.binary(max_size=1024) | st.binary(max_size=256).map(lambda tail: b"\x80\x04" + tail)
       | st.binary(max_size=256).map(lambda tail: struct.pack("<Q", len(tail)) + tail))
def test_loader_any_bytes(scratch, data):
    load_bytes(scratch, data)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 10 ** 6))
def test_loader_valid_file_with_flipped_bytes(scratch, edits, cut):
    data = bytearray(valid_file())
    for position, value in edits:
        data[position % len(data)] = value
    load_bytes(scratch, bytes(data[:cut]))


@FUZZ
@given(choice=st.sampled_from(["document", "field", "dtype", "shape", "offsets", "prefix", "metadata"]),
       field=st.sampled_from(FIELDS), value=json_values, dtype=st.sampled_from(SAFETENSORS_DTYPES),
       tensor=st.sampled_from(["weights", "time_scale", "sigmas"]),
       numbers=st.lists(st.integers(-2 ** 63, 2 ** 64), max_size=4), prefix=st.integers(0, 2 ** 64 - 1))
def test_loader_valid_file_with_rewritten_header(scratch, choice, field, value, dtype, tensor, numbers, prefix):
    header, payload = split(valid_file())
    document = json.loads(header["__metadata__"][METADATA_KEY])
    if choice == "document":
        header["__metadata__"][METADATA_KEY] = json.dumps(value)
    elif choice == "field":
        document[field] = value
        header["__metadata__"][METADATA_KEY] = json.dumps(document)
    elif choice == "metadata":
        header["__metadata__"] = value
    elif choice == "dtype":
        header[tensor]["dtype"] = dtype
    elif choice == "shape":
        header[tensor]["shape"] = numbers
    elif choice == "offsets":
        header[tensor]["data_offsets"] = numbers
    load_bytes(scratch, join(header, payload, prefix if choice == "prefix" else None))


TORCH_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                torch.float8_e5m2, torch.int64, torch.int8, torch.bool)


@st.composite
def tensor_files(draw):
    """Real safetensors files: any dtype, shapes that may not fit (zero-size included), any values."""
    steps, order = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    shapes = {"weights": (steps, order), "time_scale": (draw(st.sampled_from([steps, steps + 1, 0])),),
              "sigmas": (steps + 1,)}
    tensors = {}
    for name, shape in shapes.items():
        if name == "sigmas" and draw(st.booleans()):
            continue
        values = draw(st.lists(st.floats(-3, 3) | st.sampled_from([math.nan, math.inf, 0.0]),
                               min_size=math.prod(shape), max_size=math.prod(shape)))
        tensor = torch.tensor(values, dtype=torch.float64).reshape(shape)
        if name == "weights":
            tensor = tensor.tril()
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        tensors[name] = tensor.abs().to(dtype) if name != "weights" else tensor.to(dtype)
    afs = draw(st.booleans())
    document = {"format": "dyweight/1", "nfe": steps - afs, "order": order, "afs": afs, "divisor": "sigma",
                "schedule": {"kind": "explicit"} if "sigmas" in tensors else {"kind": "comfy", "scheduler": "karras"},
                "prediction": None, "model_family": None, "sigma_min": None, "sigma_max": None, "cfg": None,
                "training": draw(json_values.filter(lambda v: isinstance(v, dict)) | st.just({}))}
    return save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(document)})


@FUZZ
@given(data=tensor_files())
def test_loader_real_files_of_any_dtype_and_shape(scratch, data):
    load_bytes(scratch, data)


def nested(depth: int, leaf="0", brackets="[]") -> str:
    return brackets[0] * depth + leaf + brackets[1] * depth


@pytest.mark.parametrize("document", [
    nested(100_000), nested(100_000, '{"a": 0', ("{\"a\": ", "}")), nested(900),
    json.dumps({**trained_like_phi().metadata(), "training": json.loads(nested(600))}),
    '{"format": "dyweight/1", "nfe": ' + "9" * 5000 + "}",
], ids=["arrays-100000", "objects-100000", "arrays-900", "training-600", "5000-digit-number"])
def test_deeply_nested_or_huge_metadata_is_the_named_error(scratch, document):
    header, payload = split(valid_file())
    header["__metadata__"][METADATA_KEY] = document
    path = scratch / "deep.safetensors"
    path.write_bytes(join(header, payload))
    with pytest.raises(CoefficientFileError) as caught:
        Coefficients.load(path)
    assert caught.value.reason == "metadata_malformed" and "deep.safetensors" in str(caught.value)


def test_deeply_nested_header_is_the_named_error(scratch):
    header, payload = split(valid_file())
    text = json.dumps(header).encode()
    path = scratch / "deep-header.safetensors"
    path.write_bytes(join(text[:-1] + b', "x": ' + nested(100_000).encode() + b"}", payload))
    with pytest.raises(CoefficientFileError, match="not a safetensors file"):
        Coefficients.load(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load(scratch, dtype):
    phi = trained_like_phi()
    tensors = {"weights": phi.weights.to(dtype), "time_scale": phi.time_scale.to(dtype), "sigmas": phi.sigmas}
    loaded = load_bytes(scratch, save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(phi.metadata())}))
    assert loaded is not None and torch.equal(loaded.weights, tensors["weights"])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int64, torch.bool])
def test_non_float_dtypes_are_refused_by_name(scratch, dtype):
    phi = trained_like_phi()
    tensors = {"weights": phi.weights.to(dtype), "time_scale": phi.time_scale, "sigmas": phi.sigmas}
    path = scratch / "dtype.safetensors"
    path.write_bytes(save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(phi.metadata())}))
    with pytest.raises(CoefficientFileError, match=r"tensor 'weights' must be float32 .* is torch\.") as caught:
        Coefficients.load(path)
    assert caught.value.reason == "shape"


# --- the release importer -------------------------------------------------------------------------------

RELEASE_ERRORS = (ReleaseImportError, UnsafePickleError, CoefficientError)


def import_bytes(folder: Path, data: bytes, name: str = "network-snapshot-000010.pkl"):
    path = folder / name
    path.write_bytes(data)
    try:
        phi = import_release_file(path)
    except RELEASE_ERRORS as error:
        assert str(path) in str(error)
        return None
    assert isinstance(phi, Coefficients)
    json.dumps(phi.metadata())
    return phi


def snapshot_states():
    """The predictor and loss states of a release snapshot (see release_files.write_snapshot)."""
    full = torch.tensor(PIXEL_ROWS, dtype=torch.float32)
    predictor = {
        "_parameters": OrderedDict(hybrid_weights=full.clone(), t_scale=torch.tensor([0.9, 1.0, 1.1])),
        "_buffers": OrderedDict(mask=window_mask(4, 3)), "num_steps": 5, "max_history_steps": 3, "afs": True,
        "guidance_type": None, "guidance_rate": 0.0,
    }
    loss = {"num_steps": 5, "teacher_steps": 35, "schedule_type": "polynomial", "schedule_rho": 7.0,
            "afs": True, "sigma_min": 0.002, "sigma_max": 80.0, "loss_type": "l2", "dataset_name": "cifar10",
            "t_steps": None, "_init_kwargs": {"sampler_tea": "heun"}}
    return predictor, loss


def snapshot_bytes(predictor, loss) -> bytes:
    with release_modules():
        return pickle.dumps({"predictor": PersistentObject("DyWeight_predictor", predictor, "raise SystemExit"),
                             "loss_fn": PersistentObject("DyWeight_loss", loss, "raise SystemExit")}, protocol=4)


def flux_checkpoint(folder: Path) -> bytes:
    return write_flux(folder / "seed.pt", FLUX_ROWS, [1.0, 0.9, 1.1, 1.0]).read_bytes()


NUMPY_DTYPES = ("<f8", ">f8", "<f4", "<f2", "<i8", "|b1", "<c16", "<U3", "|V4", "longdouble")
TENSOR_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool,
                 torch.complex64, torch.uint8)


SPECIAL_NUMBERS = (math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e308, 5e-324, 0, -1, 2 ** 63, 10 ** 400)
SHAPES = ((), (0,), (3,), (4,), (5,), (0, 0), (3, 3), (4, 4), (4, 3), (4, 4, 1))


@st.composite
def arrays(draw):
    """Tensors and numpy arrays of any dtype, of shapes the release's fields have (or nearly)."""
    shape = draw(st.sampled_from(SHAPES) | st.lists(st.integers(0, 5), max_size=3).map(tuple))
    values = np.array(draw(st.lists(st.floats(-3, 3) | st.sampled_from(SPECIAL_NUMBERS[:8]),
                                    min_size=math.prod(shape), max_size=math.prod(shape))), dtype=np.float64)
    values = values.reshape(shape)
    if draw(st.booleans()):
        with np.errstate(invalid="ignore"):
            return torch.from_numpy(values).to(draw(st.sampled_from(TENSOR_DTYPES)))
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    with np.errstate(invalid="ignore"):  # NaN/Inf cast to integers: any value will do
        return values.astype(dtype) if dtype.kind != "V" else np.zeros(shape, dtype=dtype)


plain_leaves = (st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.floats()
                | st.sampled_from(SPECIAL_NUMBERS) | st.text(max_size=12) | st.binary(max_size=12) | arrays())
plain_values = (plain_leaves | arrays() | st.lists(plain_leaves, max_size=3)
                | st.dictionaries(st.text(max_size=6), plain_leaves, max_size=3))
PREDICTOR_KEYS = ("hybrid_weights", "t_scale", "mask", "num_steps", "max_history_steps", "afs", "guidance_type",
                  "guidance_rate", "_parameters", "_buffers")
LOSS_KEYS = ("num_steps", "teacher_steps", "schedule_type", "schedule_rho", "afs", "sigma_min", "sigma_max",
             "loss_type", "dataset_name", "t_steps", "_init_kwargs")
FLUX_KEYS = ("window_size", "dyweight_weights_raw", "dyweight_t_scales", "dyweight_meta", "dyweight_params")


@FUZZ
@given(data=st.binary(max_size=1024) | st.binary(max_size=512).map(lambda tail: b"\x80\x04" + tail)
       | st.binary(max_size=512).map(lambda tail: b"PK\x03\x04" + tail))
def test_importer_any_bytes(scratch, data):
    import_bytes(scratch, data)


@FUZZ
@given(kind=st.sampled_from(["snapshot", "flux"]),
       edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10 ** 6))
def test_importer_valid_files_with_flipped_bytes(scratch, kind, edits, cut):
    data = bytearray(snapshot_bytes(*snapshot_states()) if kind == "snapshot" else flux_checkpoint(scratch))
    for position, value in edits:
        data[position % len(data)] = value
    import_bytes(scratch, bytes(data[:cut]), "network-snapshot-000010.pkl" if kind == "snapshot" else "dyweight.pt")


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(["predictor", "loss"]),
                                  st.sampled_from(PREDICTOR_KEYS + LOSS_KEYS), plain_values), min_size=1, max_size=3))
def test_importer_snapshot_fields_hold_anything(scratch, changes):
    predictor, loss = snapshot_states()
    for where, key, value in changes:
        if where == "loss":
            loss[key] = value
        elif key in ("hybrid_weights", "t_scale", "mask"):
            container = predictor["_buffers" if key == "mask" else "_parameters"]
            if isinstance(container, dict):
                container[key] = value
        else:
            predictor[key] = value
    import_bytes(scratch, snapshot_bytes(predictor, loss))


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(FLUX_KEYS), plain_values), min_size=1, max_size=3))
def test_importer_flux_fields_hold_anything(scratch, changes):
    data = {"window_size": 2, "dyweight_weights_raw": torch.tensor(FLUX_ROWS),
            "dyweight_t_scales": torch.tensor([1.0, 0.9, 1.1, 1.0]), "dyweight_meta": {"K": 4}}
    for key, value in changes:
        data[key] = value
    path = scratch / "dyweight_fuzz.pt"
    try:
        torch.save(data, path)
    except Exception:  # noqa: BLE001 - a value torch.save itself cannot write is no test case
        return
    import_bytes(scratch, path.read_bytes(), "dyweight_fuzz.pt")


@pytest.mark.parametrize("where, key, value, words", [
    ("predictor", "max_history_steps", math.nan, "whole number"),
    ("predictor", "max_history_steps", math.inf, "whole number"),
    ("predictor", "afs", torch.ones(3), "true or false"),
    ("loss", "schedule_rho", 0.0, "positive number"),
    ("loss", "schedule_rho", 10 ** 400, "positive number"),
    ("loss", "sigma_max", -80.0, "positive number"),
    ("predictor", "hybrid_weights", np.ones((4, 4), dtype=np.longdouble), "numpy array of type"),
], ids=["history-nan", "history-inf", "afs-tensor", "rho-zero", "rho-huge", "sigma-max-negative", "long-double"])
def test_importer_refuses_what_the_fuzzer_found_by_name(scratch, where, key, value, words):
    predictor, loss = snapshot_states()
    if key == "hybrid_weights":
        predictor["_parameters"][key] = value
    else:
        (predictor if where == "predictor" else loss)[key] = value
    path = scratch / "network-snapshot-000010.pkl"
    path.write_bytes(snapshot_bytes(predictor, loss))
    with pytest.raises(ReleaseImportError, match=f"'{key}' must be|'{key}' is a") as caught:
        import_release_file(path)
    assert words in str(caught.value)


@pytest.mark.parametrize("field, value, words", [
    ("schedule", {"kind": "flux", "mu": math.nan}, "'mu'"),
    ("model_family", {"name": "SD15"}, "model_family"),
], ids=["flux-mu-nan", "family-not-a-name"])
def test_loader_refuses_unusable_metadata_values(scratch, field, value, words):
    header, payload = split(valid_file())
    document = json.loads(header["__metadata__"][METADATA_KEY])
    document[field] = value
    header["__metadata__"][METADATA_KEY] = json.dumps(document)
    path = scratch / "values.safetensors"
    path.write_bytes(join(header, payload))
    with pytest.raises(CoefficientFileError, match=words) as caught:
        Coefficients.load(path)
    assert caught.value.reason == "invalid"


def test_summary_of_a_file_with_an_odd_training_record(scratch):
    header, payload = split(valid_file())
    document = json.loads(header["__metadata__"][METADATA_KEY])
    document["training"] = {"iterations": 5, "validation": {"rmse": "n/a"}, "teacher": ["a", {"b": None}]}
    header["__metadata__"][METADATA_KEY] = json.dumps(document)
    phi = load_bytes(scratch, join(header, payload))
    assert "trained: teacher=" in phi.summary() and "RMSE" not in phi.summary()
