"""The edges of Φ's validation, the initialisers, the preset cache and the file loader — each case here
was a code change (a mutant, see scripts/mutation_test.sh) that no other test noticed."""

import dataclasses
import json
import math
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from comfyui_dyweight.coefficients import (
    Coefficients, CoefficientError, CoefficientFileError, PresetRegistry, adams_bashforth, euler,
    variable_step_adams_bashforth)
from comfyui_dyweight.coefficients.initializers import variable_step_rows
from comfyui_dyweight.coefficients.io import METADATA_KEY

F64 = torch.float64


def phi_with(**change):
    fields = dict(weights=torch.tensor([[1.0, 0.0], [1.5, -0.5], [1.5, -0.5]]), time_scale=torch.ones(3))
    fields.update(change)
    return Coefficients(**fields)


# --- Φ validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rho, accepted", [(0.5, True), (7, True), (0.0, False), (-1.0, False), (math.nan, False),
                                           (math.inf, False), (True, False), ("7", False)])
def test_edm_rho_must_be_a_positive_finite_number(rho, accepted):
    change = dict(schedule={"kind": "edm", "rho": rho}, sigma_min=0.002, sigma_max=80.0)
    if accepted:
        assert phi_with(**change).schedule["rho"] == rho
    else:
        with pytest.raises(CoefficientError, match="positive 'rho'"):
            phi_with(**change)


@pytest.mark.parametrize("sigmas, accepted", [
    ([3.0, 2.0, 1.0, 0.0], True),      # a grid may end at 0
    ([3.0, 2.0, 1.0, 0.5], True),
    ([3.0, 2.0, 2.0, 0.0], False),     # equal neighbours
    ([3.0, 1.0, 2.0, 0.0], False),     # not decreasing after the first step
    ([3.0, 2.0, 1.0, -0.5], False),
    ([math.nan, 2.0, 1.0, 0.0], False),
    ([math.inf, 2.0, 1.0, 0.0], False),
    ([3.0, 2.0, 1.0], False),          # N+1 = 4 values needed
])
def test_explicit_sigmas_must_be_n_plus_1_finite_decreasing_values(sigmas, accepted):
    change = dict(schedule={"kind": "explicit"}, sigmas=torch.tensor(sigmas))
    if accepted:
        assert phi_with(**change).sigmas.tolist() == sigmas
    else:
        with pytest.raises(CoefficientError, match="sigmas must"):
            phi_with(**change)


def test_detached_is_float32_on_the_cpu_without_history():
    weights = torch.tensor([[1.0], [1.0]], dtype=F64, requires_grad=True)
    scales = torch.ones(2, dtype=F64, requires_grad=True)
    phi = Coefficients(weights=weights * 1, time_scale=scales * 1, schedule={"kind": "explicit"},
                       sigmas=torch.tensor([2.0, 1.0, 0.0], dtype=F64))
    plain = phi.detached()
    for tensor in (plain.weights, plain.time_scale, plain.sigmas):
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and not tensor.requires_grad


# --- initialisers ----------------------------------------------------------------------------------------

def test_euler_is_one_column_and_keeps_the_metadata():
    phi = euler(3, prediction="flow", model_family="Flux")
    assert phi.order == 1 and phi.weights.tolist() == [[1.0]] * 3
    assert (phi.prediction, phi.model_family, phi.training) == ("flow", "Flux", {"initialiser": "euler"})


def test_variable_step_adams_bashforth_final_step_and_metadata():
    to_zero = [5.0, 3.0, 1.5, 0.5, 0.0]
    phi = variable_step_adams_bashforth(to_zero, order=3, prediction="eps")
    assert phi.weights[-1].tolist() == [1.0, 0.0, 0.0]  # Euler into σ = 0 by default
    assert phi.weights[:-1].tolist() == [list(row) + [0.0] * (3 - len(row)) for row in variable_step_rows(to_zero, 3)[:-1]]
    assert phi.prediction == "eps" and phi.training == {"initialiser": "variable_step_adams_bashforth(order=3)"}
    kept = variable_step_adams_bashforth(to_zero, order=3, final_denoise=False)
    assert kept.weights[-1].tolist() == pytest.approx(list(variable_step_rows(to_zero, 3)[-1]), abs=0)
    to_min = [5.0, 3.0, 1.5, 0.5, 0.02]
    assert variable_step_adams_bashforth(to_min, order=3).weights[-1].tolist() == list(variable_step_rows(to_min, 3)[-1])


def test_variable_step_adams_bashforth_short_grids():
    assert variable_step_adams_bashforth([2.0, 0.0]).steps == 1  # one step, no AFS
    with pytest.raises(CoefficientError):
        variable_step_adams_bashforth([2.0, 0.0], afs=True)


# --- the preset registry ---------------------------------------------------------------------------------

def trained(nfe, value):
    return dataclasses.replace(adams_bashforth(nfe, 2, prediction="eps", training={"iterations": 1}),
                               time_scale=torch.full((nfe,), value))


def test_registry_sees_a_rewritten_file_and_keeps_serving_an_unchanged_one(tmp_path):
    path = tmp_path / "mine.safetensors"
    trained(5, 0.9).save(path)
    registry = PresetRegistry([tmp_path], include_shipped=False)
    assert registry.find("SD15", "eps", 5).coefficients.time_scale[0].item() == pytest.approx(0.9)
    assert registry.find("SD15", "eps", 5).coefficients.time_scale[0].item() == pytest.approx(0.9)
    trained(5, 0.7).save(path)
    stamp = path.stat().st_mtime_ns + 10 ** 9
    os.utime(path, ns=(stamp, stamp))
    assert registry.find("SD15", "eps", 5).coefficients.time_scale[0].item() == pytest.approx(0.7)


def test_registry_lists_user_nfe_and_filters_by_steps(tmp_path):
    trained(12, 0.9).save(tmp_path / "nfe12.safetensors")
    with_afs = adams_bashforth(4, 2, afs=True, prediction="eps", training={"iterations": 1})
    with_afs.save(tmp_path / "afs-nfe4.safetensors")
    registry = PresetRegistry([tmp_path], include_shipped=False)
    assert registry.available_nfe() == [3, 4, 5, 6, 7, 8, 9, 10, 12]
    assert registry.find("SD15", "eps", 4).path.name == "afs-nfe4.safetensors"
    assert registry.find("SD15", "eps", 4, steps=5).path.name == "afs-nfe4.safetensors"
    assert registry.find("SD15", "eps", 4, steps=4).path is None  # the stock KSampler's 4 sigmas: no AFS Φ


# --- the file loader -------------------------------------------------------------------------------------

def write(path, tensors, document):
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(document)})
    return path


def load_error(path) -> CoefficientFileError:
    with pytest.raises(CoefficientFileError) as caught:
        Coefficients.load(path)
    assert str(path) in str(caught.value)
    return caught.value


@pytest.mark.parametrize("change, reason, words", [
    (dict(bias=torch.ones(2)), "shape", "unexpected ['bias']"),
    (dict(time_scale=None), "shape", "missing ['time_scale']"),
    (dict(sigmas=torch.ones(7)), "shape", "do not fit together"),
])
def test_tensor_set_and_shapes(tmp_path, change, reason, words):
    phi = adams_bashforth(4, schedule={"kind": "explicit"}, sigmas=torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    tensors = {"weights": phi.weights.float(), "time_scale": phi.time_scale.float(), "sigmas": phi.sigmas.float()}
    tensors.update(change)
    tensors = {name: tensor for name, tensor in tensors.items() if tensor is not None}
    error = load_error(write(tmp_path / "t.safetensors", tensors, phi.metadata()))
    assert error.reason == reason and words in str(error)


def test_metadata_that_is_not_an_object(tmp_path):
    phi = adams_bashforth(3)
    path = tmp_path / "list.safetensors"
    save_file({"weights": phi.weights.float(), "time_scale": phi.time_scale.float()}, str(path),
              metadata={METADATA_KEY: "[1, 2]"})
    error = load_error(path)
    assert error.reason == "metadata_malformed" and "must be a JSON object" in str(error)


def test_eight_bytes_claiming_a_huge_header_are_not_safetensors(tmp_path):
    path = tmp_path / "eight.safetensors"
    path.write_bytes(b"\xff" * 8)
    assert load_error(path).reason == "not_safetensors"


def header_only_file(size: int) -> bytes:
    """A safetensors file with no tensors whose JSON header is exactly ``size`` bytes."""
    text = json.dumps({"__metadata__": {"note": ""}})
    text = json.dumps({"__metadata__": {"note": "x" * (size - len(text))}})
    assert len(text) == size
    return struct.pack("<Q", size) + text.encode()


def test_a_header_filling_the_file_is_read_even_when_its_length_starts_like_a_pickle(tmp_path):
    """Header length 0x80 + 256 makes the file start with b"\\x80"; the header still parses (no metadata)."""
    path = tmp_path / "header-only.safetensors"
    path.write_bytes(header_only_file(0x180))
    assert path.read_bytes()[:1] == b"\x80"
    assert load_error(path).reason == "metadata_missing"
    path.write_bytes(header_only_file(0x180)[:-4])  # cut inside the header
    assert load_error(path).reason == "truncated"


def test_registry_read_names_missing_and_unreadable_files(tmp_path, monkeypatch):
    registry = PresetRegistry([tmp_path], include_shipped=False)
    with pytest.raises(CoefficientFileError, match="gone.safetensors.*cannot be read") as caught:
        registry.read(tmp_path / "gone.safetensors")
    assert caught.value.reason == "missing"
    (tmp_path / "locked.safetensors").write_bytes(b"x")

    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Coefficients, "load", unreadable)
    with pytest.raises(CoefficientFileError, match="locked.safetensors.*cannot be read .*Permission denied") as caught:
        registry.read(tmp_path / "locked.safetensors")
    assert caught.value.reason == "invalid"


def test_dss_fields_survive_a_round_trip(tmp_path):
    weights = torch.tensor([[1.0, 0.0, 0.0], [1.5, -0.5, 0.0], [1.2, -0.4, 0.2]], dtype=F64)
    phi = Coefficients(weights=weights, time_scale=torch.ones(3, dtype=F64), solver="dss", combine="denoised",
                       schedule={"kind": "ddpm_time", "t": [0.999, 0.6, 0.3, 0.0]},
                       source={"repository": "MCG-NJU/NeuralSolver", "licence": "MIT"})
    phi.save(tmp_path / "dss.safetensors")
    loaded = Coefficients.load(tmp_path / "dss.safetensors")
    assert (loaded.solver, loaded.combine, loaded.source, loaded.schedule) == (
        "dss", "denoised", phi.source, phi.schedule)


def file_with_header(tmp_path, change):
    phi = adams_bashforth(3)
    path = write(tmp_path / "h.safetensors", {"weights": phi.weights.float(), "time_scale": phi.time_scale.float()},
                 phi.metadata())
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])
    return path


@pytest.mark.parametrize("change, reason, words", [
    (lambda h: h["weights"].update(data_offsets=["0", "36"]), "not_safetensors", "bad header entry for tensor 'weights'"),
    (lambda h: h["weights"].update(data_offsets=[0.0, 36.0]), "not_safetensors", "bad header entry"),
    (lambda h: h["weights"].update(data_offsets=[36, 0]), "not_safetensors", "bad header entry"),
    (lambda h: h.update(__metadata__=["dyweight"]), "not_safetensors", "__metadata__ is not a string map"),
    (lambda h: h["__metadata__"].update(dyweight=5), "metadata_malformed", "'dyweight' metadata is not a string"),
    (lambda h: h["__metadata__"].update(dyweight="[" * 5000 + "]" * 5000), "metadata_malformed", "nested too deeply"),
])
def test_header_and_metadata_errors_name_the_problem(tmp_path, change, reason, words):
    error = load_error(file_with_header(tmp_path, change))
    assert error.reason == reason and words in str(error)


@pytest.mark.parametrize("depth, accepted", [(32, True), (33, False)])
def test_metadata_may_nest_32_levels(tmp_path, depth, accepted):
    """The document is level 1 and training level 2; lists inside it make up the rest."""
    training = {"note": json.loads("[" * (depth - 2) + "]" * (depth - 2))}
    phi = adams_bashforth(3, training=training)
    path = tmp_path / "nested.safetensors"
    save_file({"weights": phi.weights.float(), "time_scale": phi.time_scale.float()}, str(path),
              metadata={METADATA_KEY: json.dumps(phi.metadata())})
    if accepted:
        assert Coefficients.load(path).training == training
    else:
        error = load_error(path)
        assert error.reason == "metadata_malformed" and "more than 32 levels" in str(error)


def test_phi_keeps_private_copies_of_its_records():
    schedule, training = {"kind": "comfy", "scheduler": "karras"}, {"validation": {"rmse": 0.1}}
    source = {"repository": "x", "extra": {"a": 1}}
    phi = adams_bashforth(3, schedule=schedule, training=training, source=source)
    schedule["scheduler"], training["validation"]["rmse"], source["extra"]["a"] = "simple", 9, 2
    assert phi.schedule["scheduler"] == "karras" and phi.training["validation"]["rmse"] == 0.1
    assert phi.source["extra"]["a"] == 1


@pytest.mark.parametrize("times, accepted", [([1.0, 0.0], True), ([1, 0.5, 0], True), ([1.5, 0.0], False),
                                             ([0.5], False), ([True, 0.0], False), ([0.5, 0.5], False)])
def test_ddpm_time_grids(times, accepted):
    steps = len(times) - 1 if len(times) > 1 else 1
    weights = torch.zeros(steps, steps, dtype=F64)
    weights[:, 0] = 1.0
    fields = dict(weights=weights, time_scale=torch.ones(steps, dtype=F64), schedule={"kind": "ddpm_time", "t": times})
    if accepted:
        assert Coefficients(**fields).schedule["t"] == times
    else:
        with pytest.raises(CoefficientError, match="'ddpm_time' schedule needs 't'"):
            Coefficients(**fields)


def test_dss_rows_before_the_last_must_sum_to_one():
    rows = torch.tensor([[1.0, 0.0, 0.0], [1.6, -0.5, 0.0], [1.2, -0.4, 0.5]], dtype=F64)  # row N−2 sums to 1.1
    with pytest.raises(CoefficientError, match="row 1 sums to 1.1"):
        Coefficients(weights=rows, time_scale=torch.ones(3, dtype=F64), solver="dss")
    rows[1, 0] = 1.5  # now only the last row is off: it just places the end point
    assert Coefficients(weights=rows, time_scale=torch.ones(3, dtype=F64), solver="dss").solver == "dss"
