"""The preset registry and the shipped Adams–Bashforth presets."""

import dataclasses
import logging
import os

import pytest
import torch

from comfyui_dyweight.coefficients import Coefficients, CoefficientFileError, PresetRegistry, adams_bashforth
from comfyui_dyweight.coefficients.presets import OFFICIAL_RELEASE, SHIPPED_DIR, SHIPPED_NFE, write_shipped_presets


def test_shipped_presets_are_up_to_date(tmp_path):
    regenerated = write_shipped_presets(tmp_path)
    for fresh in regenerated:
        shipped = SHIPPED_DIR / fresh.relative_to(tmp_path)
        assert shipped.is_file(), f"{shipped} missing: run python -m comfyui_dyweight.coefficients.presets"
        a, b = Coefficients.load(shipped), Coefficients.load(fresh)
        assert torch.equal(a.weights, b.weights) and a.metadata() == b.metadata()


def test_shipped_presets_cover_nfe_3_to_10_for_eps_and_flow():
    registry = PresetRegistry()
    assert registry.available_nfe() == list(range(3, 11))
    for nfe in SHIPPED_NFE:
        for prediction, scheduler in (("eps", "karras"), ("v", "karras"), ("flow", "simple")):
            preset = registry.find("SD15", prediction, nfe)
            assert preset.path is not None and preset.path.is_relative_to(SHIPPED_DIR)
            assert preset.coefficients.nfe == nfe
            if nfe >= 5 and prediction != "v":  # the DSS tables, searched for 5–10 steps on ε and flow models
                assert preset.origin == "shipped DSS" and preset.coefficients.prediction == prediction
                continue
            assert preset.origin == "Adams–Bashforth" and preset.coefficients.schedule["scheduler"] == scheduler
            assert torch.equal(preset.coefficients.weights, adams_bashforth(nfe).weights.float())


def trained(nfe, family, prediction, value=1.0):
    phi = adams_bashforth(nfe, 2, prediction=prediction, model_family=family, training={"iterations": 10})
    return dataclasses.replace(phi, time_scale=torch.full((nfe,), value))


def test_lookup_prefers_user_files_and_exact_family(tmp_path):
    trained(5, "SD15", "eps", 0.9).save(tmp_path / "sd15-nfe5.safetensors")
    trained(5, None, "eps", 0.8).save(tmp_path / "eps-nfe5.safetensors")
    trained(5, "SDXL", "v", 0.7).save(tmp_path / "sdxl-v-nfe5.safetensors")
    registry = PresetRegistry([tmp_path])
    assert registry.find("SD15", "eps", 5).path.name == "sd15-nfe5.safetensors"
    assert registry.find("SD21", "eps", 5).path.name == "eps-nfe5.safetensors"
    assert registry.find("SDXL", "v", 5).path.name == "sdxl-v-nfe5.safetensors"
    assert registry.find("SDXL", "eps", 5).path.name == "eps-nfe5.safetensors"  # v-pred Φ never serves eps
    assert registry.find("SDXL", "flow", 5).path.name == "dss-flow-sit-nfe5.safetensors"


def official(nfe, family, prediction):
    phi = trained(nfe, family, prediction, 0.95)
    return dataclasses.replace(phi, training={**phi.training, "source": f"{OFFICIAL_RELEASE} (released coefficients)"})


@pytest.mark.parametrize("prediction, table", [("eps", "dss-ddpm-dit-nfe6"), ("flow", "dss-flow-sit-nfe6"),
                                               ("v", None)])
def test_resolution_order_user_then_official_then_shipped_dss_then_adams_bashforth(tmp_path, prediction, table):
    """Remove the most specific file one at a time: each step falls to the next kind of Φ."""
    files = {"user-family": trained(6, "SD15", prediction), "user-any": trained(6, None, prediction),
             "official": official(6, "SD15", prediction), "official-other": official(6, "SDXL", prediction)}
    for name, phi in files.items():
        phi.save(tmp_path / f"{name}.safetensors")
    registry = PresetRegistry([tmp_path])
    picked = []
    for name in ("user-family", "user-any", "official"):
        preset = registry.find("SD15", prediction, 6)
        picked.append((preset.path.stem, preset.origin))
        (tmp_path / f"{name}.safetensors").unlink()
    fallback = registry.find("SD15", prediction, 6)
    assert picked == [("user-family", "user"), ("user-any", "user"), ("official", "official")]
    if table is None:  # no shipped table for this prediction type: another family's official Φ never serves
        assert fallback.origin == "Adams–Bashforth" and fallback.path.name == "ab-nfe6.safetensors"
    else:
        assert (fallback.path.stem, fallback.origin) == (table, "shipped DSS")
        assert fallback.coefficients.prediction == prediction and fallback.learned
    assert registry.find("SD15", prediction, 4).origin == "Adams–Bashforth"  # no table for 4 steps
    other = {"eps": "flow", "flow": "eps", "v": "flow"}[prediction]
    assert all(p.coefficients.prediction in (None, prediction) for p in registry.candidates("SD15", prediction))
    assert registry.find("SD15", other, 6).coefficients.prediction != prediction


def test_nfe_dropdown_marks_the_learned_nfe(tmp_path):
    trained(3, "SD15", "eps").save(tmp_path / "mine-nfe3.safetensors")
    registry = PresetRegistry([tmp_path])
    assert registry.learned_nfe() == [3, 5, 6, 7, 8, 9, 10]
    assert registry.learned_nfe("SD20", "v") == []  # the shipped tables serve ε and flow models only
    assert registry.learned_nfe("SD15", "eps") == [3, 5, 6, 7, 8, 9, 10]


def test_fallback_without_any_file_is_adams_bashforth(tmp_path):
    registry = PresetRegistry([tmp_path], include_shipped=False)
    preset = registry.find("Flux", "flow", 7)
    assert preset.path is None and "Adams–Bashforth" in preset.label
    assert torch.equal(preset.coefficients.weights, adams_bashforth(7).weights)
    assert preset.coefficients.schedule == {"kind": "comfy", "scheduler": "simple"}


def test_unreadable_user_file_is_skipped_not_fatal(tmp_path, caplog):
    (tmp_path / "broken.safetensors").write_bytes(b"\x80\x04garbage")
    registry = PresetRegistry([tmp_path])
    assert registry.find("SD15", "eps", 4).path.parent.name == "adams_bashforth"
    assert "broken.safetensors" in caplog.text


def _touch_later(path):
    """Move the file's modification time a second on, as a later save would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_load_reads_a_file_once_until_it_changes(tmp_path, monkeypatch, caplog):
    path = tmp_path / "mine-nfe5.safetensors"
    trained(5, "SD15", "eps", 0.9).save(path)
    registry = PresetRegistry([tmp_path], include_shipped=False)
    reads = []
    load = Coefficients.load
    monkeypatch.setattr(Coefficients, "load", lambda p: reads.append(p.name) or load(p))

    assert registry.read(path).time_scale.tolist() == pytest.approx([0.9] * 5)
    assert registry.find("SD15", "eps", 5).coefficients is registry.read(path)  # one cache for both
    assert reads == ["mine-nfe5.safetensors"]

    trained(5, "SD15", "eps", 0.7).save(path)  # same size: only the modification time tells
    _touch_later(path)
    assert registry.find("SD15", "eps", 5).coefficients.time_scale.tolist() == pytest.approx([0.7] * 5)
    assert reads == ["mine-nfe5.safetensors"] * 2

    path.write_bytes(b"\x80\x04 a pickle, not safetensors")
    with pytest.raises(CoefficientFileError) as error:
        registry.read(path)
    with pytest.raises(CoefficientFileError) as loader_error:
        load(path)  # the loader itself, not counted
    assert (error.value.reason, str(error.value)) == (loader_error.value.reason, str(loader_error.value))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert registry.find("SD15", "eps", 5).path is None
    assert caplog.text.count("skipping") == 1 and reads == ["mine-nfe5.safetensors"] * 3  # read and warned once
