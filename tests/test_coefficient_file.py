"""The coefficient file: bit-exact round trips and one clear error per kind of bad input."""

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from comfyui_dyweight.coefficients import Coefficients, CoefficientError, CoefficientFileError, adams_bashforth
from comfyui_dyweight.coefficients.io import METADATA_KEY


def trained_like_phi():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(6, 3, generator=generator).tril()
    return Coefficients(
        weights=weights, time_scale=1 + 0.1 * torch.rand(6, generator=generator), afs=True, divisor="net_sigma",
        schedule={"kind": "explicit"}, sigmas=torch.linspace(14.6, 0.0292, 7) ** 1.3, prediction="eps",
        model_family="SD15", sigma_min=0.0292, sigma_max=14.6, cfg=7.5,
        training={"teacher": "dpmpp_2m", "teacher_steps": 35, "pairs": 64, "iterations": 300,
                  "validation": {"rmse": 0.0123}})


def test_round_trip_is_bit_exact(tmp_path):
    phi = trained_like_phi()
    path = tmp_path / "phi.safetensors"
    phi.save(path)
    loaded = Coefficients.load(path)
    assert torch.equal(loaded.weights, phi.weights) and torch.equal(loaded.time_scale, phi.time_scale)
    assert torch.equal(loaded.sigmas, phi.sigmas)
    assert loaded.metadata() == phi.metadata()
    loaded.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_save_is_atomic_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "phi.safetensors"
    adams_bashforth(4).save(path)
    before = path.read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("comfyui_dyweight.coefficients.io.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trained_like_phi().save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phi.safetensors"]


def write_raw(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


def good_tensors_and_document():
    phi = trained_like_phi()
    return ({"weights": phi.weights, "time_scale": phi.time_scale, "sigmas": phi.sigmas}, phi.metadata())


def expect(path, reason, words):
    with pytest.raises(CoefficientFileError) as caught:
        Coefficients.load(path)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_missing_file(tmp_path):
    expect(tmp_path / "nope.safetensors", "missing", "no such file")


@pytest.mark.parametrize("keep", [0, 5, 40, -8])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "phi.safetensors"
    trained_like_phi().save(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    expect(path, "truncated", "truncated")


def test_pickle_renamed_to_safetensors_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.safetensors"

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    path.write_bytes(pickle.dumps({"weights": Boom()}))
    expect(path, "pickle", "never unpickles")


def test_valid_file_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    """A header of 0x..80 bytes makes the file start with b"\\x80", a pickle's first byte."""
    for padding in range(300):
        phi = adams_bashforth(4, training={"note": "x" * padding})
        path = tmp_path / f"phi{padding}.safetensors"
        phi.save(path)
        if path.read_bytes()[:1] == b"\x80":
            assert torch.equal(Coefficients.load(path).weights, phi.weights.float())
            return
    pytest.fail("no padding produced a header length ending in 0x80")


def test_torch_save_archive_is_refused(tmp_path):
    path = tmp_path / "archive.safetensors"
    torch.save({"weights": torch.ones(2, 2)}, path)
    expect(path, "pickle", "torch.save")


def test_other_bytes_are_not_safetensors(tmp_path):
    path = tmp_path / "text.safetensors"
    path.write_bytes(b"this is a README, not coefficients at all" * 4)
    expect(path, "not_safetensors", "not a safetensors file")


def test_wrong_shapes(tmp_path):
    tensors, document = good_tensors_and_document()
    tensors["time_scale"] = torch.ones(4)
    expect(write_raw(tmp_path / "a.safetensors", tensors, {METADATA_KEY: json.dumps(document)}), "shape", "shapes")


def test_metadata_disagreeing_with_tensors(tmp_path):
    tensors, document = good_tensors_and_document()
    document["nfe"] = 9
    expect(write_raw(tmp_path / "a.safetensors", tensors, {METADATA_KEY: json.dumps(document)}), "shape", "NFE 9")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values(tmp_path, value):
    tensors, document = good_tensors_and_document()
    tensors["weights"] = tensors["weights"].clone()
    tensors["weights"][2, 1] = value
    expect(write_raw(tmp_path / "a.safetensors", tensors, {METADATA_KEY: json.dumps(document)}), "non_finite", "NaN or Inf")


def test_missing_metadata(tmp_path):
    tensors, _ = good_tensors_and_document()
    expect(write_raw(tmp_path / "a.safetensors", tensors, {"other": "x"}), "metadata_missing", "not a DyWeight")


def test_malformed_metadata(tmp_path):
    tensors, document = good_tensors_and_document()
    expect(write_raw(tmp_path / "a.safetensors", tensors, {METADATA_KEY: "{not json"}), "metadata_malformed", "JSON")
    del document["divisor"]
    expect(write_raw(tmp_path / "b.safetensors", tensors, {METADATA_KEY: json.dumps(document)}),
           "metadata_malformed", "divisor")


def test_bad_field_value(tmp_path):
    tensors, document = good_tensors_and_document()
    document["divisor"] = "tau"
    expect(write_raw(tmp_path / "a.safetensors", tensors, {METADATA_KEY: json.dumps(document)}), "invalid", "divisor")


def test_unknown_format_version(tmp_path):
    tensors, document = good_tensors_and_document()
    document["format"] = "dyweight/99"
    expect(write_raw(tmp_path / "a.safetensors", tensors, {METADATA_KEY: json.dumps(document)}),
           "format_version", "dyweight/99")


def test_header_claiming_more_than_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"\x00" * 64)
    expect(path, "not_safetensors", "not a safetensors file")


@pytest.mark.parametrize("change, words", [
    (dict(time_scale=torch.tensor([1.0, -1.0, 1.0])), "positive"),
    (dict(weights=torch.ones(3, 2)), "outside the available history"),
    (dict(prediction="x0"), "prediction"),
    (dict(schedule={"kind": "edm", "rho": 7.0}), "sigma_min and sigma_max"),
    (dict(schedule={"kind": "explicit"}), "needs the base grid"),
    (dict(sigmas=torch.tensor([1.0, 2.0, 0.5, 0.0])), "strictly decreasing"),
])
def test_invalid_coefficients_are_refused_in_memory(change, words):
    fields = dict(weights=torch.tensor([[1.0, 0.0], [1.5, -0.5], [1.5, -0.5]]), time_scale=torch.ones(3))
    fields.update(change)
    with pytest.raises(CoefficientError, match=words):
        Coefficients(**fields)


def test_a_cfg_range_record_round_trips_and_a_bad_one_is_refused(tmp_path):
    import dataclasses

    from comfyui_dyweight.coefficients import CoefficientError, adams_bashforth

    record = {"kind": "guidance", "min": 2.5, "max": 4.0}
    phi = dataclasses.replace(adams_bashforth(3), cfg=record)
    phi.save(tmp_path / "ranged.safetensors")
    assert Coefficients.load(tmp_path / "ranged.safetensors").cfg == record
    assert "guidance 2.5–4" in phi.summary()
    for bad in [{"kind": "cfg", "min": 5.0, "max": 2.0}, {"kind": "scale", "min": 1.0, "max": 2.0},
                {"kind": "cfg", "min": -1.0, "max": 2.0}, {"kind": "cfg", "min": 1.0}]:
        with pytest.raises(CoefficientError, match="cfg range"):
            dataclasses.replace(phi, cfg=bad)
