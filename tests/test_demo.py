"""The README's main command, smoke-sized: ``python -m comfyui_dyweight.demo --quick`` in a subprocess.

Checks what a newcomer gets (grid PNG, error plot, tables of finite figures at the NFE it claims, RMSE
and Fréchet distance, Φ files that load) and that a second run takes the teacher pairs from the cache instead of running the
teacher again. The figures of the full run are the benchmark's business, not the tests'.
"""

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_dyweight.coefficients import Coefficients
from comfyui_dyweight.demo import figures, pipeline
from comfyui_dyweight.demo.classifier import load_classifier
from comfyui_dyweight.demo.metrics import frechet_distance
from comfyui_dyweight.trainer.pairs import PairSet
from comfyui_dyweight.demo.font import text_mask

ROOT = Path(__file__).resolve().parents[1]


def read_png(path: Path) -> np.ndarray:
    """Decode the 8-bit RGB or palette, filter-0 PNGs that figures.write_png writes (enough to check them)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    position, chunks = 8, {}
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0]
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        position += 12 + length
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and colour in (2, 3)
    samples = 3 if colour == 2 else 1
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + samples * width)
    assert (raw[:, 0] == 0).all()
    if colour == 3:
        palette = np.frombuffer(chunks[b"PLTE"], dtype=np.uint8).reshape(-1, 3)
        return palette[raw[:, 1:]]
    return raw[:, 1:].reshape(height, width, 3)


def png_size(path: Path) -> tuple:
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def run_demo(out: Path, cache: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "comfyui_dyweight.demo", "--quick", "--threads", "1", "--out", str(out),
         "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)
    assert completed.returncode == 0, f"demo failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The quick demo twice with the same cache: (first stdout, first results, second stdout, second results)."""
    base = tmp_path_factory.mktemp("demo")
    outcomes = []
    for name in ("first", "second"):
        completed = run_demo(base / name, base / "cache")
        outcomes.append((base / name, completed.stdout, json.loads((base / name / "results.json").read_text())))
    return outcomes


def test_quick_demo_writes_the_grid_the_plot_and_a_finite_table(two_runs):
    out, stdout, results = two_runs[0]
    width, height = png_size(out / "grid.png")
    columns, rows = 6, len(results["settings"]["distill"]["nfe"])  # teacher, 3 hand-made, DSS, DyWeight; a row per NFE
    zoomed = 16 * 4
    assert width > columns * 3 * zoomed and height > rows * 2 * zoomed, (width, height)
    if importlib.util.find_spec("matplotlib") is None:
        print("\nSKIP (plot assertion only): matplotlib is not installed, so error_vs_nfe.png is not drawn; "
              "`bash scripts/bootstrap.sh test` installs the plots extra")
    else:
        assert png_size(out / "error_vs_nfe.png")[0] > 300
    table = results["table"]
    assert [row["nfe"] for row in table] == [3, 5]
    for row in table:
        zero_shot = {"dss_sit", "dss_dit"} if row["nfe"] >= 5 else set()  # the shipped tables have 5–10 steps
        assert set(row["solvers"]) == {"euler", "ipndm", "dpmpp_2m", "init", "dss", "dyweight", *zero_shot}
        assert row["winner"] == min(("dss", "dyweight"), key=lambda family: row["solvers"][family]["rmse"])
        for name, figure in row["solvers"].items():
            assert math.isfinite(figure["rmse"]) and figure["rmse"] > 0, (row["nfe"], name, figure)
            assert math.isfinite(figure["psnr"]), (row["nfe"], name, figure)
            assert math.isfinite(figure["fd"]) and figure["fd"] > 0, (row["nfe"], name, figure)
            assert figure["calls"] == row["nfe"], f"{name} made {figure['calls']} model calls at NFE {row['nfe']}"
        assert math.isfinite(row["ratio"])
    assert math.isfinite(results["fd_reference"]["teacher_fd"]) and results["fd_reference"]["heldout_digits"] == 600
    assert "| NFE | Euler | iPNDM | DPM-Solver++(2M)" in stdout
    assert "| NFE | Teacher (Heun, 16 NFE) | Euler | iPNDM | DPM-Solver++(2M)" in stdout  # the FD table
    assert (out / "table.md").read_text().count("\n| ") == 2 * (len(table) + 1)  # two tables: header + one line per NFE
    for nfe in (3, 5):
        phi = Coefficients.load(out / "phi" / f"digits-edm-dyweight-nfe{nfe}.safetensors")
        assert phi.nfe == nfe and phi.afs and phi.order == 3
        dss = Coefficients.load(out / "phi" / f"digits-edm-dss-nfe{nfe}.safetensors")
        assert dss.solver == "dss" and dss.nfe == dss.order == nfe and dss.sigmas is not None


def test_second_run_reuses_the_teacher_cache(two_runs):
    (_, first_stdout, first), (_, second_stdout, second) = two_runs
    assert first["timings"]["teacher"]["train"]["cache_hit"] is False
    assert first["timings"]["teacher"]["test"]["cache_hit"] is False
    assert second["timings"]["teacher"]["train"]["cache_hit"] is True
    assert second["timings"]["teacher"]["test"]["cache_hit"] is True
    assert "generated in" in first_stdout and "reused from the cache" not in first_stdout
    assert second_stdout.count("reused from the cache") == 2
    assert not any("ran the teacher again" in note for note in second["notes"])
    # the same pairs and the same seeds give the same table
    assert second["table"] == first["table"]


@pytest.mark.parametrize("colours", [5, 256 ** 3])  # palette PNG, and RGB when there are > 256 colours
def test_png_writer_round_trips_pixels(tmp_path, colours):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(colours if colours < 256 else 900, 3), dtype=np.uint8)[
        rng.integers(0, min(colours, 900), size=(17, 23))]
    figures.write_png(tmp_path / "x.png", image)
    assert (read_png(tmp_path / "x.png") == image).all()


def test_grid_shows_each_cell_upscaled_with_nearest_neighbour_and_labels(tmp_path):
    ramp = np.linspace(-1, 1, 16 * 16).reshape(1, 16, 16)
    cells = [[[ramp] * 2, [-ramp] * 2]]
    path = figures.comparison_grid(tmp_path / "g.png", ["title"], ["A", "B"], ["NFE 3"], cells, [["", "x"]],
                                   per_row=2, zoom=4)
    pixels = read_png(path)[..., 0]
    blocks = [pixels[y:y + 4, x:x + 4] for y in range(pixels.shape[0] - 4) for x in range(pixels.shape[1] - 4)]
    # the darkest (−1) pixel of the ramp becomes a uniform 4×4 black block: nearest-neighbour, not smoothed
    assert any((block == 0).all() for block in blocks)
    assert text_mask("NFE 3").any() and text_mask("?").shape == text_mask("A").shape


def test_score_is_rmse_to_the_teacher_and_fd_to_the_held_out_digits():
    """A "solver" that returns its input (one model call at σ = 0, which the EDM wrapper passes through)
    on the held-out digits, against targets 0.1 brighter: RMSE 0.1 exactly, and FD 0 (the very reference set)."""
    space = load_classifier()
    real = space.heldout_images
    pairs = PairSet(torch.arange(len(real)), real, real + 0.1)
    figures_here, shown = pipeline.score(lambda denoise, x: denoise(x, 0.0), pipeline.demo_model(), pairs, space,
                                         batch_size=256, keep=4)
    assert figures_here["rmse"] == pytest.approx(0.1, rel=1e-5)
    assert figures_here["psnr"] == pytest.approx(20 * math.log10(2 / 0.1), rel=1e-5)
    assert figures_here["fd"] == pytest.approx(0.0, abs=1e-6) and figures_here["calls"] == 1
    assert torch.equal(shown, real[:4])
    moved = pipeline.score(lambda denoise, x: denoise(x, 0.0).flip(-1), pipeline.demo_model(), pairs, space)[0]
    halves = frechet_distance(space.features(real[:300]), space.features(real[300:]))
    assert moved["fd"] > 2 * halves  # mirrored digits are further from real ones than real ones from each other


def test_bar_verdict_uses_the_best_hand_made_solver():
    rows = [{"nfe": 3, "ratio": 0.59}, {"nfe": 4, "ratio": 0.61}, {"nfe": 6, "ratio": 2.0}]
    verdict = pipeline.bar_verdict(rows)
    assert verdict["per_nfe"] == {3: True, 4: False} and verdict["met"] is False


def test_demo_wrapper_bootstraps_then_runs_the_module():
    script = (ROOT / "demo" / "run").read_text()
    assert "scripts/bootstrap.sh\" demo" in script and "python -m comfyui_dyweight.demo \"$@\"" in script
    subprocess.run(["bash", "-n", str(ROOT / "demo" / "run")], check=True)
