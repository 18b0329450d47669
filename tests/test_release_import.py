"""Importing the coefficients published with the DyWeight paper: both release formats, safety, the CLI.

Release-format files come from the writer in ``release_files.py``.
"""

import argparse
import builtins
import hashlib
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_dyweight.coefficients import Coefficients, dyweight_sample, edm_sigmas, flux_sigmas
from comfyui_dyweight.coefficients.schedules import base_sigmas
from comfyui_dyweight.cli import import_release as import_command
from comfyui_dyweight.trainer.analytic import gaussian_denoiser
from comfyui_dyweight.release.convert import (
    ReleaseImportError, flux_resolution_mu, import_release_file, import_release_files)
from comfyui_dyweight.release.safe_unpickle import UnsafePickleError, load_release_object, safe_loads
from reference_tables import compact_weights, load_tables, sd15_uniform_time_sigmas
from release_files import (FLUX_ROWS, PIXEL_ROWS, SD_ROWS, PersistentObject, marker_source, release_modules,
                           write_flux, write_snapshot, write_table_snapshot)

F64 = torch.float64


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER-code-ran"
    yield path
    assert not path.exists(), "code embedded in a release file was executed"


def same_phi(a: Coefficients, b: Coefficients) -> bool:
    return (torch.equal(a.weights.float(), b.weights.float()) and torch.equal(a.time_scale.float(), b.time_scale.float())
            and torch.equal(a.sigmas.float(), b.sigmas.float()) and a.metadata() == b.metadata())


# --- conversion -----------------------------------------------------------------------------------------

def test_pixel_snapshot_converts_with_edm_conventions(tmp_path, marker):
    source = write_snapshot(tmp_path / "00000-cifar-nfe3" / "network-snapshot-000010.pkl", marker,
                            full_rows=PIXEL_ROWS, t_scale=[0.87, 1.0, 0.92], afs=True, history=3)
    phi = import_release_file(source)
    assert phi.weights.tolist() == compact_weights(torch.tensor(PIXEL_ROWS).tolist(), 3).tolist()
    assert phi.weights[3].tolist() == pytest.approx([1.92, -1.33, 0.4])  # column 0 = newest
    assert phi.time_scale.tolist() == pytest.approx([1.0, 0.87, 1.0, 0.92])  # s_0 unused with AFS
    assert (phi.afs, phi.nfe, phi.order, phi.divisor) == (True, 3, 3, "sigma")
    assert phi.schedule == {"kind": "explicit"}
    assert torch.allclose(phi.sigmas, edm_sigmas(4, 0.002, 80.0, 7.0), rtol=1e-12)  # ends at σ_min, no final 0
    assert (phi.prediction, phi.model_family, phi.cfg) == ("eps", "pixel", None)
    assert (phi.sigma_min, phi.sigma_max) == pytest.approx((0.002, 80.0))
    record = phi.training
    assert record["source_file"] == "00000-cifar-nfe3/network-snapshot-000010.pkl"
    assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (record["teacher"], record["teacher_steps"], record["dataset"], record["loss"]) == (
        "heun", 35, "cifar10", "inception")

    written = import_release_files([source], tmp_path / "out")
    assert [path.name for path in written] == ["dyweight-00000-cifar-nfe3.safetensors"]
    assert same_phi(Coefficients.load(written[0]), phi)


def test_sd15_snapshot_uses_the_models_uniform_time_grid(tmp_path, marker):
    source = write_snapshot(tmp_path / "00036-mscoco-nfe8" / "network-snapshot-000005.pkl", marker,
                            full_rows=SD_ROWS, t_scale=[0.98, 1.0, 0.99, 0.9], afs=False, history=2,
                            dataset="ms_coco", teacher_steps=50, loss_type="l2", schedule_type="discrete", rho=1.0,
                            guidance_type="cfg", guidance_rate=7.5)
    phi = import_release_file(source)
    assert (phi.afs, phi.nfe, phi.order, phi.divisor) == (False, 4, 2, "sigma")
    assert phi.weights.tolist() == compact_weights(torch.tensor(SD_ROWS).tolist(), 2).tolist()
    assert phi.time_scale.tolist() == pytest.approx([0.98, 1.0, 0.99, 0.9])
    assert (phi.prediction, phi.model_family, phi.cfg) == ("eps", "SD15", 7.5)
    assert phi.schedule == {"kind": "explicit"}
    # uniform DDPM time 1 → 1e-3 on SD's scaled-linear schedule, whatever σ range the loss object stored
    assert torch.allclose(phi.sigmas, sd15_uniform_time_sigmas(5), rtol=1e-10)
    assert phi.sigmas[-1].item() == pytest.approx(0.02916716, rel=1e-6)
    assert phi.training["release_schedule"]["sigma_max"] == 80.0


def test_stored_t_steps_are_used(tmp_path, marker):
    grid = [70.0, 12.0, 3.0, 0.5, 0.01]
    source = write_snapshot(tmp_path / "00099-ffhq-nfe3" / "network-snapshot-000010.pkl", marker,
                            full_rows=PIXEL_ROWS, t_scale=[0.9, 1.0, 1.1], afs=True, history=3, dataset="ffhq",
                            t_steps=grid)
    phi = import_release_file(source)
    assert phi.sigmas.tolist() == pytest.approx(grid, rel=1e-6)


def test_flux_checkpoint_converts_with_flux_conventions(tmp_path):
    source = write_flux(tmp_path / "dyweight_nfe4.pt", FLUX_ROWS, [1.01, 0.99, 0.98, 0.97])
    phi = import_release_file(source)
    assert phi.weights.tolist() == compact_weights(torch.tensor(FLUX_ROWS).tolist(), 2).tolist()
    assert phi.time_scale.tolist() == pytest.approx([1.01, 0.99, 0.98, 0.97])
    assert (phi.afs, phi.nfe, phi.order, phi.divisor) == (False, 4, 2, "net_sigma")
    assert phi.schedule == {"kind": "flux", "mu": 0.63}
    assert torch.allclose(phi.sigmas.double(), flux_sigmas(4, 0.63)) and phi.sigmas[-1] == 0  # ends at 0
    assert (phi.prediction, phi.model_family, phi.cfg) == ("flow", "Flux", 3.5)
    assert phi.training["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert phi.training["base_model"] == "FLUX.1-dev"

    assert flux_resolution_mu(512, 512) == 0.63 and flux_resolution_mu(1024, 1024) == 1.15
    large = import_release_file(source, flux_mu=1.15)
    assert large.schedule == {"kind": "flux", "mu": 1.15}
    assert torch.allclose(large.sigmas.double(), flux_sigmas(4, 1.15))

    written = import_release_files([source], tmp_path / "out")
    assert [path.name for path in written] == ["dyweight-flux-dyweight_nfe4.safetensors"]
    assert same_phi(Coefficients.load(written[0]), phi)
    assert import_release_files([source], tmp_path / "out", flux_mu=1.15)[0].name == \
        "dyweight-flux-dyweight_nfe4-mu1.15.safetensors"


def test_folders_newest_snapshot_no_overwrite_and_force(tmp_path, marker):
    release = tmp_path / "release"
    older = write_snapshot(release / "exps" / "00001-cifar-nfe3" / "network-snapshot-000005.pkl", marker,
                           full_rows=PIXEL_ROWS, t_scale=[0.5, 0.5, 0.5], afs=True, history=3)
    newer = write_snapshot(release / "exps" / "00001-cifar-nfe3" / "network-snapshot-000010.pkl", marker,
                           full_rows=PIXEL_ROWS, t_scale=[0.9, 1.0, 1.1], afs=True, history=3)
    write_flux(release / "dyweight_flux" / "checkpoints" / "dyweight_nfe4.pt", FLUX_ROWS, [1.0] * 4)
    out = tmp_path / "models" / "dyweight"
    written = import_release_files([release], out)
    assert sorted(path.name for path in written) == [
        "dyweight-00001-cifar-nfe3.safetensors", "dyweight-flux-dyweight_nfe4.safetensors"]
    loaded = Coefficients.load(out / "dyweight-00001-cifar-nfe3.safetensors")
    assert loaded.training["source_sha256"] == hashlib.sha256(newer.read_bytes()).hexdigest()

    before = {path: path.stat().st_mtime_ns for path in written}
    with pytest.raises(FileExistsError, match="force"):
        import_release_files([older], out)
    assert {path: path.stat().st_mtime_ns for path in written} == before
    import_release_files([older], out, force=True)
    replaced = Coefficients.load(out / "dyweight-00001-cifar-nfe3.safetensors")
    assert replaced.time_scale.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.5])


def test_not_a_dyweight_file_is_refused(tmp_path, marker):
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"weights": np.ones((2, 2))}))
    with pytest.raises(ReleaseImportError, match="not a DyWeight release file"):
        import_release_file(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UnsafePickleError, match="neither a Python pickle nor a torch.save archive"):
        import_release_file(text)
    with release_modules():  # an EDM persistent object that is not a predictor; its module_src must not run
        other = pickle.dumps({"G_ema": PersistentObject("Generator", {"w": torch.ones(2)}, marker_source(marker))})
    (tmp_path / "other.pkl").write_bytes(other)
    with pytest.raises(ReleaseImportError, match="not a DyWeight release file"):
        import_release_file(tmp_path / "other.pkl")


# --- safety ---------------------------------------------------------------------------------------------

class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious_payloads(marker: Path):
    touch = f"touch {marker}"
    opener = f"open({str(marker)!r}, 'w').write('x')"
    with release_modules() as solvers:
        calls_sampler = pickle.dumps({"predictor": Reduce(solvers.heun_sampler, str(marker))})
        persistent_nested = pickle.dumps({"predictor": PersistentObject(
            "DyWeight_predictor", {"_parameters": {"hybrid_weights": Reduce(os.system, touch)}},
            marker_source(marker))})
    return {
        "os.system": pickle.dumps({"predictor": Reduce(os.system, touch)}),
        "builtins.eval": pickle.dumps([Reduce(builtins.eval, opener)]),
        "builtins.exec": pickle.dumps(Reduce(builtins.exec, opener)),
        "builtins.print": pickle.dumps(Reduce(builtins.print, "PWNED-by-pickle")),
        "subprocess.call": pickle.dumps(Reduce(subprocess.call, ["touch", str(marker)])),
        "a release sampler called": calls_sampler,
        "inside an EDM persistent object": persistent_nested,
    }


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "builtins.exec", "builtins.print", "subprocess.call",
                                  "a release sampler called", "inside an EDM persistent object"])
def test_pickles_that_would_run_code_are_refused(tmp_path, marker, capfd, case):
    path = tmp_path / "network-snapshot-000010.pkl"
    path.write_bytes(_malicious_payloads(marker)[case])
    with pytest.raises(UnsafePickleError, match="refused to load it") as caught:
        import_release_file(path)
    message = str(caught.value)
    assert str(path) in message and "never runs code" in message
    assert "PWNED" not in capfd.readouterr().out
    with pytest.raises(UnsafePickleError):
        import_release_files([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refusal_names_the_callable(tmp_path, marker):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Reduce(builtins.eval, "1")))
    with pytest.raises(UnsafePickleError, match=r"refers to `builtins\.eval`"):
        load_release_object(path)


def test_torch_save_archive_with_code_is_refused(tmp_path, marker):
    path = tmp_path / "dyweight_nfe3.pt"
    torch.save({"dyweight_weights_raw": torch.ones(1, 1), "payload": Reduce(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafePickleError, match="torch.save archive.*weights_only"):
        import_release_file(path)


def test_restricted_unpickler_rebuilds_plain_data():
    value = {"tensor": torch.arange(6.0).reshape(2, 3)[:, 1:], "parameter": torch.nn.Parameter(torch.ones(2)),
             "array": np.arange(4, dtype=np.float32), "scalar": np.float64(2.5), "ordered": OrderedDict(a=1),
             "set": {1, 2}, "bytes": b"\x00\x01", "nested": [(1, 2.0, None, True, "text")]}
    for protocol in (2, 4, 5):
        loaded = safe_loads(pickle.dumps(value, protocol=protocol))
        assert torch.equal(loaded["tensor"], value["tensor"]) and not loaded["parameter"].requires_grad
        assert np.array_equal(loaded["array"], value["array"]) and loaded["scalar"] == 2.5
        assert loaded["ordered"] == value["ordered"] and loaded["set"] == {1, 2}
        assert loaded["bytes"] == b"\x00\x01" and loaded["nested"] == value["nested"]
    with pytest.raises(UnsafePickleError, match="objects"):
        safe_loads(pickle.dumps(np.array([1, "a"], dtype=object)))


# --- the published numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [("00000-cifar-nfe3", 0.5147305), ("00036-mscoco-nfe8", 0.4192247)])
def test_published_tables_reproduce_the_reference_values(tmp_path, marker, name, expected):
    table = load_tables()[name]
    source = write_table_snapshot(tmp_path / name / "network-snapshot-000010.pkl", marker, table)
    (written,) = import_release_files([source], tmp_path / "out")
    phi = Coefficients.load(written)
    sigmas = base_sigmas(phi)
    x = sigmas[:1].clone().reshape(1, 1)
    result = dyweight_sample(gaussian_denoiser(0.5), x, sigmas, phi)
    assert result.item() == pytest.approx(expected, abs=5e-7)


def test_every_published_table_converts_to_its_compact_form(tmp_path, marker):
    tables = load_tables()
    for name, table in tables.items():
        if "num_steps" in table:
            phi = import_release_file(write_table_snapshot(tmp_path / name / "network-snapshot-000010.pkl",
                                                           marker, table))
            scales = ([1.0] if table["afs"] else []) + table["t_scale"]
            assert phi.weights.tolist() == compact_weights(table["W"], table["max_history_steps"]).tolist(), name
            assert phi.time_scale.tolist() == pytest.approx(scales), name
            assert phi.nfe == table["nfe_model_steps"], name
            assert phi.sigmas.shape == (table["num_steps"],), name
        else:
            phi = import_release_file(write_flux(tmp_path / f"dyweight_{name}.pt", table["W"], table["t_scales"],
                                                 table["window_size"]))
            assert phi.weights.tolist() == compact_weights(table["W"], table["window_size"]).tolist(), name
            assert phi.time_scale.tolist() == pytest.approx(table["t_scales"]), name
            assert phi.time_scale.tolist() == pytest.approx(
                (0.5 + torch.sigmoid(torch.tensor(table["phi"], dtype=F64))).tolist(), abs=1e-6), name


# --- the command line -----------------------------------------------------------------------------------

def run_cli(*arguments, cwd):
    return subprocess.run([sys.executable, "-m", "comfyui_dyweight.trainer", "import", *map(str, arguments)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_converts_refuses_overwrite_and_malicious_files(tmp_path, marker):
    snapshot = write_snapshot(tmp_path / "exps" / "00036-mscoco-nfe8" / "network-snapshot-000005.pkl", marker,
                              full_rows=SD_ROWS, t_scale=[1.0] * 4, afs=False, history=2, dataset="ms_coco",
                              schedule_type="discrete", rho=1.0, guidance_type="cfg", guidance_rate=7.5)
    flux = write_flux(tmp_path / "dyweight_nfe4.pt", FLUX_ROWS, [1.0] * 4)
    evil = tmp_path / "evil" / "network-snapshot-000010.pkl"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({"predictor": Reduce(os.system, f"touch {marker}")}))
    out = tmp_path / "models" / "dyweight"

    refused = run_cli(snapshot, flux, evil, "--out", out, cwd=tmp_path)
    assert refused.returncode != 0
    assert "refused to load it" in refused.stderr and str(evil) in refused.stderr
    assert re.search(r"`(posix|nt|os)\.system`", refused.stderr), refused.stderr
    assert "Traceback" not in refused.stderr
    assert not out.exists()  # all or nothing

    done = run_cli(snapshot, flux, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = sorted(path.name for path in out.iterdir())
    assert names == ["dyweight-00036-mscoco-nfe8.safetensors", "dyweight-flux-dyweight_nfe4.safetensors"]
    assert Coefficients.load(out / names[0]).model_family == "SD15"
    assert Coefficients.load(out / names[1]).model_family == "Flux"

    again = run_cli(snapshot, "--out", out, cwd=tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_import_subcommand_options(tmp_path, capsys):
    """The subcommand's own parser (in process): --force and --flux-resolution / --flux-mu."""
    parser = argparse.ArgumentParser()
    import_command.register(parser.add_subparsers(dest="command", required=True))
    flux = write_flux(tmp_path / "dyweight_nfe4.pt", FLUX_ROWS, [1.0] * 4)
    out = tmp_path / "out"

    def main(*arguments):
        parsed = parser.parse_args(["import", *map(str, arguments)])
        return parsed.run(parsed)

    assert main(flux, "--out", out) == 0
    assert main(flux, "--out", out) == 1 and "--force" in capsys.readouterr().err
    assert main(flux, "--out", out, "--force") == 0
    assert main(flux, "--out", out, "--flux-resolution", "1024x1024") == 0
    assert Coefficients.load(out / "dyweight-flux-dyweight_nfe4-mu1.15.safetensors").schedule["mu"] == 1.15
    assert main(flux, "--out", out, "--flux-mu", "0.9") == 0
    assert Coefficients.load(out / "dyweight-flux-dyweight_nfe4-mu0.9.safetensors").schedule["mu"] == 0.9
    with pytest.raises(SystemExit):
        parser.parse_args(["import", str(flux), "--out", str(out), "--flux-resolution", "big"])
    with pytest.raises(SystemExit):
        parser.parse_args(["import", str(flux)])  # --out is required
