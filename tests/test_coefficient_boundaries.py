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
    Coefficients, CoefficientError, CoefficientFileError, Preset, PresetRegistry, adams_bashforth,
    adams_bashforth_preset, euler, variable_step_adams_bashforth)
from comfyui_dyweight.coefficients.initializers import variable_step_rows
from comfyui_dyweight.coefficients.io import METADATA_KEY
from comfyui_dyweight.coefficients.presets import OFFICIAL_RELEASE

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
        with pytest.raises(CoefficientError, match="^an 'edm' schedule needs a positive 'rho'$"):
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


@pytest.mark.parametrize("sigmas, shape", [(torch.tensor([3.0, 2.0, 1.0]), "(3,)"), ([3.0, 2.0, 1.0, 0.0], "()")])
def test_sigmas_of_the_wrong_length_or_kind_name_what_is_needed(sigmas, shape):
    with pytest.raises(CoefficientError, match=rf"sigmas must hold N\+1 = 4 values, got shape \{shape[:-1]}\)"):
        phi_with(schedule={"kind": "explicit"}, sigmas=sigmas)


@pytest.mark.parametrize("weights, shape", [(torch.zeros(0, 2), "(0, 2)"), (torch.zeros(3, 0), "(3, 0)"),
                                            (torch.ones(3), "(3,)"), ([[1.0]], "()")])
def test_weights_are_a_non_empty_matrix(weights, shape):
    with pytest.raises(CoefficientError, match=rf"^weights must be an \[N, K\] tensor, got shape \{shape[:-1]}\)$"):
        phi_with(weights=weights, time_scale=torch.ones(len(weights)))


@pytest.mark.parametrize("time_scale, shape", [(torch.ones(2), "(2,)"), (torch.ones(3, 1), "(3, 1)"),
                                               ([1.0, 1.0, 1.0], "()")])
def test_time_scale_has_one_entry_per_step(time_scale, shape):
    words = rf"^time_scale must have one entry per step \(3\), got shape \{shape[:-1]}\)$"
    with pytest.raises(CoefficientError, match=words):
        phi_with(time_scale=time_scale)


@pytest.mark.parametrize("change", [dict(time_scale=torch.ones(3, dtype=torch.long)),
                                    dict(weights=torch.tensor([[1, 0], [1, 0], [1, 0]]))])
def test_weights_and_time_scales_are_floating_point(change):
    with pytest.raises(CoefficientError, match="^weights and time_scale must be floating-point tensors$"):
        phi_with(**change)


@pytest.mark.parametrize("change", [dict(time_scale=torch.tensor([1.0, math.nan, 1.0])),
                                    dict(time_scale=torch.tensor([1.0, 1.0, math.inf])),
                                    dict(weights=torch.tensor([[1.0, 0.0], [math.nan, 0.0], [1.5, -0.5]]))])
def test_weights_and_time_scales_are_finite(change):
    with pytest.raises(CoefficientError, match=r"^weights and time_scale must be finite \(found NaN or Inf\)$"):
        phi_with(**change)


@pytest.mark.parametrize("value, accepted", [(2.0 ** -100, True), (0.0, False), (-0.0, False), (-1.0, False)])
def test_time_scales_are_positive(value, accepted):
    time_scale = torch.tensor([1.0, value, 1.0])
    if accepted:
        assert phi_with(time_scale=time_scale).time_scale[1].item() == value
    else:
        with pytest.raises(CoefficientError, match="^time scales must be positive"):
            phi_with(time_scale=time_scale)


def test_afs_is_a_bool_and_needs_a_second_step():
    with pytest.raises(CoefficientError, match="^afs must be true or false, got 1$"):
        phi_with(afs=1)
    with pytest.raises(CoefficientError, match="^with the analytical first step a Φ needs at least 2 steps$"):
        Coefficients(weights=torch.ones(1, 1), time_scale=torch.ones(1), afs=True)
    assert Coefficients(weights=torch.ones(1, 1), time_scale=torch.ones(1)).nfe == 1
    assert Coefficients(weights=torch.ones(2, 1), time_scale=torch.ones(2), afs=True).nfe == 1


@pytest.mark.parametrize("name, value", [("sigma_min", -1.0), ("sigma_max", math.nan), ("cfg", math.inf),
                                         ("cfg", True), ("sigma_max", "80")])
def test_sigma_range_and_cfg_are_finite_numbers_at_least_zero(name, value):
    with pytest.raises(CoefficientError, match=f"^{name} must be a finite number ≥ 0, got {value!r}$"):
        phi_with(**{name: value})
    assert getattr(phi_with(**{name: 0.0}), name) == 0.0


@pytest.mark.parametrize("sigma_min, sigma_max", [(None, 80.0), (0.002, None), (None, None)])
def test_an_edm_schedule_needs_both_ends_of_the_sigma_range(sigma_min, sigma_max):
    with pytest.raises(CoefficientError, match="^an 'edm' schedule needs sigma_min and sigma_max$"):
        phi_with(schedule={"kind": "edm", "rho": 7.0}, sigma_min=sigma_min, sigma_max=sigma_max)


@pytest.mark.parametrize("mu", [math.nan, None, "1.15", True])
def test_a_flux_schedule_needs_a_finite_shift(mu):
    with pytest.raises(CoefficientError, match="^a 'flux' schedule needs the resolution shift 'mu'$"):
        phi_with(schedule={"kind": "flux", "mu": mu})


def test_training_and_source_are_records():
    with pytest.raises(CoefficientError, match="^training must be a dict$"):
        phi_with(training=["iterations", 5])
    with pytest.raises(CoefficientError, match=r"^source must be a dict \(repository, commit, file, licence\) or "
                                               r"absent$"):
        phi_with(source="MCG-NJU/NeuralSolver")


def test_a_cfg_range_is_copied_too():
    record = {"kind": "cfg", "min": 2.0, "max": 6.0}
    phi = phi_with(cfg=record)
    record["max"] = 9.0
    assert phi.cfg == {"kind": "cfg", "min": 2.0, "max": 6.0}


@pytest.mark.parametrize("schedule", [{"kind": "comfy"}, {"kind": "comfy", "scheduler": 5}])
def test_a_comfy_schedule_names_its_scheduler(schedule):
    with pytest.raises(CoefficientError, match="^a 'comfy' schedule needs the ComfyUI scheduler name in 'scheduler'$"):
        phi_with(schedule=schedule)


@pytest.mark.parametrize("schedule", ["karras", {"scheduler": "karras"}, {"kind": "linear"}])
def test_a_schedule_is_a_record_of_a_known_kind(schedule):
    with pytest.raises(CoefficientError, match="^schedule must be a dict whose 'kind' is one of"):
        phi_with(schedule=schedule)


def test_an_unknown_solver_is_named():
    with pytest.raises(CoefficientError, match="^solver must be one of \\('dyweight', 'dss'\\), got 'pndm'$"):
        phi_with(solver="pndm")


def test_a_cfg_range_may_be_a_single_value():
    record = {"kind": "cfg", "min": 3.5, "max": 3.5}
    assert phi_with(cfg=record).cfg == record


def test_detached_is_float32_on_the_cpu_without_history():
    weights = torch.tensor([[1.0], [1.0]], dtype=F64, requires_grad=True)
    scales = torch.ones(2, dtype=F64, requires_grad=True)
    phi = Coefficients(weights=weights * 1, time_scale=scales * 1, schedule={"kind": "explicit"},
                       sigmas=torch.tensor([2.0, 1.0, 0.0], dtype=F64))
    plain = phi.detached()
    for tensor in (plain.weights, plain.time_scale, plain.sigmas):
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu" and not tensor.requires_grad


# --- initialisers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [0, 5])
def test_adams_bashforth_orders_are_1_to_4(order):
    with pytest.raises(CoefficientError, match=f"^Adams–Bashforth order must be 1…4, got {order}$"):
        adams_bashforth(5, order)


def test_euler_needs_a_history_window():
    with pytest.raises(CoefficientError, match="^order must be ≥ 1, got 0$"):
        euler(3, order=0)


def test_initialisers_start_in_float64():
    for phi in (euler(3), adams_bashforth(3), variable_step_adams_bashforth([3.0, 2.0, 1.0, 0.0])):
        assert phi.weights.dtype == F64 and phi.time_scale.dtype == F64 and phi.time_scale.tolist() == [1.0] * 3


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
    with pytest.raises(CoefficientError, match="the grid is too short for this many steps"):
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


def test_find_asks_the_host_whether_a_phi_runs_and_may_pass_over_fixed_grids(tmp_path):
    trained(5, 0.9).save(tmp_path / "user.safetensors")
    registry = PresetRegistry([tmp_path], include_shipped=False)
    asked = []

    def runs_nowhere(phi):
        asked.append(phi.time_scale[0].item())
        return False

    assert registry.find("SD15", "eps", 5, runs=runs_nowhere).path is None and asked == [pytest.approx(0.9)]
    assert registry.find("SD15", "eps", 5, runs=lambda phi: phi.nfe == 5).path.name == "user.safetensors"
    grid = torch.tensor([9.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    (tmp_path / "user.safetensors").unlink()
    dataclasses.replace(trained(5, 0.9), schedule={"kind": "explicit"}, sigmas=grid).save(tmp_path / "grid.safetensors")
    assert registry.find("SD15", "eps", 5).path.name == "grid.safetensors"
    assert registry.find("SD15", "eps", 5, fixed_grid=False).path is None  # img2img cannot run part of its grid


def test_an_official_phi_serves_only_the_family_it_names(tmp_path):
    official = dataclasses.replace(trained(5, 0.9), training={"source": f"{OFFICIAL_RELEASE}@0123abc", "iterations": 1})
    official.save(tmp_path / "any-family.safetensors")  # no model_family: a user Φ would serve every model
    registry = PresetRegistry([tmp_path], include_shipped=False)
    assert registry.find("SD15", "eps", 5).path is None
    dataclasses.replace(official, model_family="SD15").save(tmp_path / "sd15.safetensors")
    assert registry.find("SD15", "eps", 5).describe() == "sd15.safetensors (dyweight, official, NFE 5)"
    assert registry.find("SDXL", "eps", 5).path is None


def test_describe_names_the_file_or_the_built_in_fallback(tmp_path):
    assert Preset(None, adams_bashforth_preset(6)).describe() == (
        "built-in adams-bashforth (dyweight, Adams–Bashforth, NFE 6)")
    trained(5, 0.9).save(tmp_path / "mine.safetensors")
    assert PresetRegistry([tmp_path], include_shipped=False).find("SD15", "eps", 5).describe() == (
        "mine.safetensors (dyweight, user, NFE 5)")


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
    (dict(sigmas=torch.ones(7)), "shape", "'sigmas': (7,)"),
])
def test_tensor_set_and_shapes(tmp_path, change, reason, words):
    phi = adams_bashforth(4, schedule={"kind": "explicit"}, sigmas=torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    tensors = {"weights": phi.weights.float(), "time_scale": phi.time_scale.float(), "sigmas": phi.sigmas.float()}
    tensors.update(change)
    tensors = {name: tensor for name, tensor in tensors.items() if tensor is not None}
    error = load_error(write(tmp_path / "t.safetensors", tensors, phi.metadata()))
    assert error.reason == reason and words in str(error)


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "its metadata must be a JSON object"),
    ('{"format": ', "its metadata is not valid JSON (Expecting value"),  # the parser's own words
])
def test_metadata_that_is_no_json_object(tmp_path, text, words):
    phi = adams_bashforth(3)
    path = tmp_path / "metadata.safetensors"
    save_file({"weights": phi.weights.float(), "time_scale": phi.time_scale.float()}, str(path),
              metadata={METADATA_KEY: text})
    error = load_error(path)
    assert error.reason == "metadata_malformed" and words in str(error)


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
    with pytest.raises(CoefficientFileError, match=r"gone.safetensors.*cannot be read \(No such file or directory\)") \
            as caught:
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
        with pytest.raises(CoefficientError, match=r"^a 'ddpm_time' schedule needs 't': the DDPM times of the grid, "
                                                   r"strictly decreasing in \[0, 1\]$"):
            Coefficients(**fields)


def test_dss_rows_before_the_last_must_sum_to_one():
    rows = torch.tensor([[1.0, 0.0, 0.0], [1.6, -0.5, 0.0], [1.2, -0.4, 0.5]], dtype=F64)  # row N−2 sums to 1.1
    with pytest.raises(CoefficientError, match="row 1 sums to 1.1"):
        Coefficients(weights=rows, time_scale=torch.ones(3, dtype=F64), solver="dss")
    rows[1, 0] = 1.5  # now only the last row is off: it just places the end point
    assert Coefficients(weights=rows, time_scale=torch.ones(3, dtype=F64), solver="dss").solver == "dss"


# --- the header reader at its exact limits ------------------------------------------------------------

@pytest.mark.parametrize("length", range(8))
def test_a_file_shorter_than_the_length_prefix_is_truncated(tmp_path, length):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01" * length)
    error = load_error(path)
    assert error.reason == "truncated" and f"only {length} bytes long" in str(error)


def test_a_length_prefix_alone_is_no_header(tmp_path):
    path = tmp_path / "prefix.safetensors"
    path.write_bytes(struct.pack("<Q", 0))  # 8 bytes: a header of 0 bytes, which is no JSON
    error = load_error(path)
    assert error.reason == "not_safetensors" and "not a safetensors file (bad header)" in str(error)


@pytest.mark.parametrize("cut", [1, 2])
def test_a_header_one_byte_short_is_truncated(tmp_path, cut):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(header_only_file(64)[:-cut])
    error = load_error(path)
    assert error.reason == "truncated" and "the file ends inside its header" in str(error)


@pytest.mark.parametrize("claimed, reason", [
    ((1 << 24) - 1, "truncated"),       # below 16 MiB a header that runs past the end is a cut download
    (1 << 24, "not_safetensors"),       # from 16 MiB on, without the "{" of a JSON header, it is other bytes
    ((1 << 24) + 1, "not_safetensors"),
])
def test_a_header_running_past_the_end_without_json_is_truncated_below_16_mib(tmp_path, claimed, reason):
    path = tmp_path / "claim.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b"x" * 64)
    assert load_error(path).reason == reason


@pytest.mark.parametrize("claimed", [1 << 40, 1 << 63, (1 << 64) - 1])  # the prefix is unsigned
def test_a_json_header_running_past_the_end_is_truncated_whatever_its_claimed_length(tmp_path, claimed):
    path = tmp_path / "claim.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b'{"weights": ')
    assert load_error(path).reason == "truncated"


def test_a_header_that_is_json_but_no_object(tmp_path):
    path = tmp_path / "list.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"[1, 2]  ")
    error = load_error(path)
    assert error.reason == "not_safetensors" and "bad header" in str(error)


def saved_phi_bytes(tmp_path) -> bytes:
    phi = adams_bashforth(3)
    return write(tmp_path / "whole.safetensors", {"weights": phi.weights.float(), "time_scale": phi.time_scale.float()},
                 phi.metadata()).read_bytes()


@pytest.mark.parametrize("cut", [1, 4, 12])
def test_tensor_data_cut_short_names_both_byte_counts(tmp_path, cut):
    whole = saved_phi_bytes(tmp_path)
    (size,) = struct.unpack("<Q", whole[:8])
    ends = [entry["data_offsets"][1] for name, entry in json.loads(whole[8:8 + size]).items() if name != "__metadata__"]
    assert len(whole) - 8 - size == max(ends)  # the whole file: the data ends where the last tensor does
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole[:-cut])
    error = load_error(path)
    assert error.reason == "truncated" and f"stops at byte {max(ends) - cut} of {max(ends)}" in str(error)


def test_a_header_without_padding_is_read_to_its_last_byte(tmp_path):
    """safetensors pads its header with spaces; a writer that does not leaves "}" as the header's last byte."""
    whole = saved_phi_bytes(tmp_path)
    (size,) = struct.unpack("<Q", whole[:8])
    text = whole[8:8 + size].rstrip(b" ")
    assert text.endswith(b"}")
    path = tmp_path / "unpadded.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + whole[8 + size:])
    assert Coefficients.load(path).weights.tolist() == adams_bashforth(3).weights.tolist()


@pytest.mark.parametrize("offsets", [[0, "48"], ["0", 48], [-1, 48], [True, 48], [0, 48, 48], [0], [], None, 48])
def test_data_offsets_must_be_two_ordered_counts(tmp_path, offsets):
    def change(header):
        header["weights"]["data_offsets"] = offsets

    error = load_error(file_with_header(tmp_path, change))
    assert error.reason == "not_safetensors" and "bad header entry for tensor 'weights'" in str(error)


def test_a_header_entry_that_is_no_object(tmp_path):
    error = load_error(file_with_header(tmp_path, lambda header: header.update(weights=[0, 48])))
    assert error.reason == "not_safetensors" and "bad header entry for tensor 'weights'" in str(error)


def test_a_header_safetensors_itself_refuses_is_invalid(tmp_path):
    """Offsets that fit the data but not the tensor's shape pass the header check; safetensors says why."""
    error = load_error(file_with_header(tmp_path, lambda header: header["time_scale"].update(shape=[5])))
    assert error.reason == "invalid" and "safetensors could not read it (" in str(error)


def test_an_empty_tensor_has_equal_offsets_and_passes_the_header(tmp_path):
    """A zero-size tensor's data_offsets are [a, a]: the header is fine, the tensor set is not."""
    phi = adams_bashforth(3)
    path = write(tmp_path / "empty.safetensors",
                 {"weights": phi.weights.float(), "time_scale": phi.time_scale.float(), "bias": torch.zeros(0)},
                 phi.metadata())
    error = load_error(path)
    assert error.reason == "shape" and "unexpected ['bias']" in str(error)


@pytest.mark.parametrize("data", [b"\x80", b"\x80\x04\x95", b"PK\x03\x04", b"PK\x03\x04\x14\x00\x00\x00\x08"])
def test_pickle_and_zip_starts_are_refused_even_when_shorter_than_a_header(tmp_path, data):
    path = tmp_path / "start.safetensors"
    path.write_bytes(data)
    assert load_error(path).reason == "pickle"


# --- a slice of a Φ's steps ----------------------------------------------------------------------------

def slice_rows_by_hand(weights, start, stop):
    """Rows start … stop − 1 of W, each weight of a gradient from before the slice moved onto the newest one."""
    order = len(weights[0])
    rows = []
    for n in range(start, stop):
        row = [0.0] * min(order, stop - start)
        for k in range(order):
            row[k if k <= n - start else 0] += weights[n][k]
        rows.append(row)
    return rows


def sliceable_phi(**change):
    generator = torch.Generator().manual_seed(3)
    fields = dict(weights=torch.randn(6, 3, generator=generator, dtype=F64).tril(),
                  time_scale=1 + 0.1 * torch.rand(6, generator=generator, dtype=F64), afs=True,
                  schedule={"kind": "explicit"}, sigmas=torch.tensor([14.0, 9.0, 5.0, 2.5, 1.0, 0.3, 0.0], dtype=F64),
                  training={"iterations": 10})
    fields.update(change)
    return Coefficients(**fields)


@pytest.mark.parametrize("start, stop", [(0, 6), (0, 3), (2, 6), (3, 5), (1, 2), (5, 6), (0, 1)])
def test_a_slice_keeps_its_rows_and_moves_earlier_gradients_onto_the_newest(start, stop):
    phi = sliceable_phi(afs=(start, stop) != (0, 1))  # one AFS step alone would need no model at all
    part = phi.steps_slice(start, stop)
    expected = torch.tensor(slice_rows_by_hand(phi.weights.tolist(), start, stop), dtype=F64)
    torch.testing.assert_close(part.weights, expected, rtol=1e-15, atol=1e-15)
    assert part.weights.sum(1).tolist() == pytest.approx(phi.weights[start:stop].sum(1).tolist(), rel=1e-14)
    assert part.time_scale.tolist() == phi.time_scale[start:stop].tolist()
    assert part.sigmas.tolist() == phi.sigmas[start:stop + 1].tolist()
    assert part.afs == (phi.afs and start == 0)
    assert part.training == {"iterations": 10, "slice_of_steps": [start, stop]}
    assert phi.weights.shape == (6, 3) and phi.training == {"iterations": 10}  # the whole Φ is unchanged


def test_a_slice_of_a_phi_without_afs_never_gains_one():
    assert not sliceable_phi(afs=False).steps_slice(0, 4).afs


def test_a_slice_of_a_ddpm_time_grid_keeps_its_times():
    weights = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.5, -0.5, 0.0, 0.0], [1.2, -0.4, 0.2, 0.0],
                            [1.1, -0.2, 0.2, -0.1]], dtype=F64)
    times = [0.999, 0.7, 0.4, 0.2, 0.0]
    phi = Coefficients(weights=weights, time_scale=torch.ones(4, dtype=F64), solver="dss",
                       schedule={"kind": "ddpm_time", "t": times})
    part = phi.steps_slice(1, 3)
    assert part.schedule == {"kind": "ddpm_time", "t": times[1:4]} and part.sigmas is None
    torch.testing.assert_close(part.weights, torch.tensor(slice_rows_by_hand(weights.tolist(), 1, 3), dtype=F64),
                               rtol=1e-15, atol=1e-15)
    assert phi.schedule["t"] == times


@pytest.mark.parametrize("start, stop", [(0, 0), (3, 3), (4, 3), (-1, 2), (0, 7), (6, 7)])
def test_a_slice_must_lie_inside_the_steps(start, stop):
    with pytest.raises(CoefficientError, match=f"steps {start}…{stop - 1} are not a slice of this Φ's 6 steps"):
        sliceable_phi().steps_slice(start, stop)


# --- the row-sum tolerance of DSS and of data-prediction averages ----------------------------------------

def row_sum_limit(row) -> float:
    """How far a row may sum from one: 1e-5 of its absolute sum, and at least 1e-5 (ROW_SUM_TOLERANCE)."""
    return 1e-5 * max(sum(abs(weight) for weight in row), 1.0)


def dss_phi_with_row(row, combine="gradient"):
    """A 3-step DSS Φ whose middle row (N−2, which must sum to one) is ``row``."""
    weights = torch.tensor([[1.0, 0.0, 0.0], [row[0], row[1], 0.0], [1.2, -0.4, 0.2]], dtype=F64)
    return Coefficients(weights=weights, time_scale=torch.ones(3, dtype=F64), solver="dss", combine=combine)


@pytest.mark.parametrize("row", [(1.25, -0.25), (1.5, -0.5), (4.0, -3.0), (0.6, 0.4)])
@pytest.mark.parametrize("combine", ["gradient", "denoised"])
def test_dss_rows_may_miss_one_by_just_under_the_tolerance(row, combine):
    limit = row_sum_limit(row)
    for miss, accepted in [(0.9 * limit, True), (-0.9 * limit, True), (1.1 * limit, False), (-1.1 * limit, False)]:
        shifted = (row[0] + miss, row[1])
        if accepted:
            assert dss_phi_with_row(shifted, combine).weights[1, 0].item() == shifted[0]
        else:
            with pytest.raises(CoefficientError, match="row 1 .*sum"):
                dss_phi_with_row(shifted, combine)


@pytest.mark.parametrize("last_miss, accepted", [(0.9, True), (1.1, False)])
def test_every_denoised_row_sums_to_one_up_to_the_tolerance_the_last_included(last_miss, accepted):
    last = [1.2, -0.4, 0.2]
    weights = torch.tensor([[1.0, 0.0, 0.0], [1.5, -0.5, 0.0], last], dtype=F64)
    weights[2, 0] += last_miss * row_sum_limit(last)
    fields = dict(weights=weights, time_scale=torch.ones(3, dtype=F64), combine="denoised")
    if accepted:
        assert Coefficients(**fields).combine == "denoised"
    else:
        with pytest.raises(CoefficientError, match="every row of weights must sum to 1.*row 2"):
            Coefficients(**fields)
    assert Coefficients(**{**fields, "combine": "gradient"}).combine == "gradient"  # no such rule for gradients
