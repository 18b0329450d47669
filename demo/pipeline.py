"""The demo's main job: distil Φ on the embedded digits model, then compare solvers on fresh seeds.

1. **Teacher pairs** (paper Algorithm 1, line 2): Heun's method at ``teacher_steps`` steps on the EDM
   grid (ρ = 7 on [σ_min, σ_max], ending at σ_min — the convention of the paper's pixel-space tables)
   from ``pairs`` seeded noise images; cached on disk, so a second run skips the teacher.
2. **Distillation**: :func:`comfyui_dyweight.trainer.distill` for each NFE, with the paper's
   pixel-space choices (analytical first step, K = 3 gradients, ``divisor = "sigma"``).
3. **Test**: a separate set of ``test_pairs`` fresh seeds (never seen by training or by the trainer's
   best-Φ selection), with its own cached teacher run. Every solver runs from the same noise at the same
   NFE on the same grid family: Euler, iPNDM (4th-order Adams–Bashforth) and DPM-Solver++(2M) on
   ``schedule(nfe)`` as ComfyUI runs them; DyWeight on ``schedule(nfe + 1)`` (its first step is
   analytical and costs no model call). So that this advantage is not mistaken for the training's, the
   untrained Φ (AB3 with the same analytical first step and grid) is a hand-made solver of the table
   too, and the ratio is to the best of all four. Model calls are counted, so the NFE in the table is
   what was measured.

Figures: RMSE per pixel to the teacher's image (values in [−1, 1]) pooled over the test set, and
PSNR = 20·log10(2 / RMSE) (peak-to-peak range 2); and, as the papers score samples (FID), the Fréchet
distance (FD) of each solver's test images to 600 held-out real digits in the 64-d penultimate feature
space of the demo's digits classifier (``classifier.py``, ``metrics.py``). The teacher's own FD is the
reference: a few-step solver that matched the teacher exactly would score it. It is not a strict
floor: 256 images give an FD with a bias and a sampling noise of their own (the teacher scores 57 on
the test seeds and 69 on the 256 training seeds), so differences of about 10 are noise, and FDs
compare with each other and with the teacher's only, not with FIDs of other data sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from ..coefficients import Coefficients, dyweight_sample, edm_sigmas, initial_coefficients
from ..coefficients.presets import SHIPPED_DIR
from ..trainer import DistillConfig, ModelSource, distill, teacher_pairs_for
from ..trainer.students import ScheduleTime
from ..trainer.teachers import BASELINE_SOLVERS
from ..version import __version__

#: The hand-made solvers compared with DyWeight, in column order, with their display names. ``init`` is
#: the starting point of Φ: 3rd-order Adams–Bashforth with the analytical first step, on DyWeight's grid.
SOLVERS = {"euler": "Euler", "ipndm": "iPNDM", "dpmpp_2m": "DPM-Solver++(2M)"}
HAND_MADE = {**SOLVERS, "init": "AB3+AFS (untrained Φ)"}
#: Every solver of the demo's table, in column order (the keys of ``solvers_for``).
#: Steps of the fine grid a zero-shot table's times are placed on (see :func:`zero_shot_table`).
ZERO_SHOT_GRID_STEPS = 512
#: The shipped DSS tables (arXiv 2505.21114) run zero-shot on the demo model: name → preset file stem.
ZERO_SHOT = {"dss_sit": "dss-flow-sit", "dss_dit": "dss-ddpm-dit"}
#: The trained families (``solver = "both"``), each against the best hand-made solver.
TRAINED = {"dss": "DSS", "dyweight": "DyWeight"}
LABELS = {**HAND_MADE, "dss_sit": "DSS SiT table (zero-shot)", "dss_dit": "DSS DiT table (zero-shot)", **TRAINED}
#: The bar of the demo: DyWeight's test RMSE at most this share of the best hand-made solver's.
BAR = 0.6
BAR_NFE = (3, 4, 5)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo distils and how (defaults: the full run, ≈ 2–3 minutes on 2 CPU cores).

    ``distill`` is the trainer's settings, with the paper's pixel-space choices: Heun at 64 steps
    (2·64 model calls per image; RMSE to Heun×256 is ≈ 0.003) from 256 pairs (20% held out for
    best-Φ selection), K = 3, the analytical first step, 200 Adam steps of 32 pairs per NFE.
    """

    distill: DistillConfig = DistillConfig(nfe=(3, 4, 5, 6), solver="both", pairs=256, iterations=200, batch_size=32,
                                           sampling_batch_size=128, teacher="heun", teacher_steps=64, order=3,
                                           afs=True, lr=0.05, seed=0)
    test_pairs: int = 256       # fresh seeds for the table and the grid
    rho: float = 7.0
    grid_seeds: int = 6         # test seeds shown in each cell of the grid

    def as_dict(self) -> dict:
        return {"distill": {**dataclasses.asdict(self.distill), "nfe": list(self.distill.nfe)},
                **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                   if field.name != "distill"}}

    def replace(self, test_pairs=None, **distill) -> "DemoSettings":
        """A copy with other :class:`DistillConfig` settings or test pairs (``None``: unchanged)."""
        return dataclasses.replace(self, distill=self.distill.with_given(**distill),
                                   test_pairs=self.test_pairs if test_pairs is None else test_pairs)


#: The full demo (the README's command).
FULL = DemoSettings()
#: A smoke-sized run for the test suite: same code path, seconds instead of minutes.
QUICK = FULL.replace(nfe=(3, 5), pairs=24, test_pairs=12, iterations=6, batch_size=8, sampling_batch_size=24,
                     teacher_steps=8)
#: Seeds of the two noise sets (independent generators).
TRAIN_NOISE_SEED, TEST_NOISE_SEED = 1, 2


def default_cache_dir() -> Path:
    """``$COMFYUI_DYWEIGHT_CACHE``, else ``$XDG_CACHE_HOME/comfyui-dyweight``, else ``~/.cache/comfyui-dyweight``."""
    explicit = os.environ.get("COMFYUI_DYWEIGHT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "comfyui-dyweight"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass
class DemoModel:
    """The embedded model as the trainer sees it: ``denoise(x, σ) -> x0`` plus its facts."""

    module: torch.nn.Module
    weights_path: Path
    weights_sha256: str

    @property
    def image_shape(self) -> tuple:
        return tuple(self.module.image_shape)

    @property
    def sigma_min(self) -> float:
        return float(self.module.sigma_min)

    @property
    def sigma_max(self) -> float:
        return float(self.module.sigma_max)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.module(x, sigma)

    def schedule(self, rho: float) -> Callable[[int], torch.Tensor]:
        """``schedule(n)``: the n-step EDM grid (ρ) on [σ_min, σ_max], ending at σ_min."""
        return lambda steps: edm_sigmas(steps, self.sigma_min, self.sigma_max, rho, to_zero=False)

    def noise(self, count: int, seed: int) -> torch.Tensor:
        """``count`` seeded noise images at σ_max."""
        generator = torch.Generator().manual_seed(seed)
        return self.sigma_max * torch.randn((count, *self.image_shape), generator=generator)

    def source(self, settings: DemoSettings, split: str) -> ModelSource:
        """The model as the trainer sees it, with the seeded noise of the ``train`` or ``test`` split."""
        count, seed = (settings.distill.pairs, TRAIN_NOISE_SEED) if split == "train" else (settings.test_pairs,
                                                                                          TEST_NOISE_SEED)
        return ModelSource(
            self.denoise, self.noise(count, seed), self.schedule(settings.rho), name="digits-edm",
            cache_key={"demo": "digits-edm", "weights_sha256": self.weights_sha256, "split": split,
                       "image_shape": list(self.image_shape), "rho": settings.rho, "dtype": "float32"},
            phi_fields={"schedule": {"kind": "edm", "rho": settings.rho},
                        "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                        "training": {"base_model": f"demo/{self.weights_path.name}",
                                     "base_model_hash": self.weights_sha256[:16]}})


def demo_model(path=None) -> DemoModel:
    """The embedded demo model (``demo/digits_edm.safetensors``) in eval mode, or the weights at ``path``."""
    from .model import DEFAULT_WEIGHTS, load_demo_model

    weights = Path(path or DEFAULT_WEIGHTS)
    return DemoModel(load_demo_model(str(weights)), weights, file_sha256(weights))


class CallCounter:
    """``denoise`` that counts its calls (to report the NFE each solver really used)."""

    def __init__(self, denoise: Callable):
        self.denoise, self.calls = denoise, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoise(x, sigma)


# --- the three phases ----------------------------------------------------------------------------
def teacher_set(model: DemoModel, settings: DemoSettings, cache_dir: Path, split: str):
    """The teacher's images from the split's noise, from the cache or generated (and then cached).

    Returns a :class:`~comfyui_dyweight.trainer.pairs.TeacherRun` (``pairs``, ``cache_hit``, ``seconds``).
    The training split is cached where :func:`distil` looks for it, so it never runs the teacher itself.
    """
    config = settings.distill.with_given(pairs=settings.test_pairs if split == "test" else None)
    with torch.no_grad():
        return teacher_pairs_for(model.source(settings, split), config, cache_dir=cache_dir)


def distil(model: DemoModel, settings: DemoSettings, cache_dir: Path, progress=None):
    """One Φ per NFE from the training split: a :class:`~comfyui_dyweight.trainer.DistillResult`."""
    return distill(model.source(settings, "train"), settings.distill, cache_dir=cache_dir, progress=progress)


def solvers_for(nfe: int, trained: dict, model: DemoModel, settings: DemoSettings) -> dict:
    """name → ``solve(denoise, x) -> x0`` at ``nfe`` model calls, in column order: the hand-made ones, the
    untrained initialisation of DyWeight's Φ, the shipped DSS tables zero-shot (where one has ``nfe``
    steps) and each trained family (``trained``: family → Φ)."""
    schedule, config = model.schedule(settings.rho), settings.distill
    solvers = {name: (lambda solver: lambda denoise, x: solver(denoise, x, schedule(nfe)))(BASELINE_SOLVERS[name])
               for name in SOLVERS}  # ComfyUI's convention: N steps on the N-step grid, one call each
    grid = schedule(nfe + int(config.afs))
    init = initial_coefficients(nfe, config.order, afs=config.afs, final_denoise=False)
    solvers["init"] = lambda denoise, x: dyweight_sample(denoise, x, grid, init)
    for name, stem in ZERO_SHOT.items():
        table = zero_shot_table(stem, nfe, model, settings)
        if table is not None:
            solvers[name] = (lambda phi: lambda denoise, x: dyweight_sample(denoise, x, phi.sigmas, phi))(table)
    for family in TRAINED:
        if family in trained:
            phi = trained[family]
            own = phi.sigmas.double() if phi.solver == "dss" else grid
            solvers[family] = (lambda phi, own: lambda denoise, x: dyweight_sample(denoise, x, own, phi))(phi, own)
    return solvers


def zero_shot_table(stem: str, nfe: int, model: DemoModel, settings: DemoSettings):
    """A shipped DSS table with ``nfe`` steps placed on the demo model's schedule, or ``None``.

    The tables were searched on other models (flow: σ from 1 to 0; DDPM: DiT's times from 0.999 to 10⁻³);
    this model has neither, so each grid point keeps its fraction of the table's time span and lands at
    that fraction of the model's own EDM schedule time (ρ-ramp from σ_max to σ_min). The coefficients are
    used as published (the DDPM table combines data predictions, which any x0 model gives).
    """
    path = SHIPPED_DIR / "dss" / f"{stem}-nfe{nfe}.safetensors"
    if not path.is_file():
        return None
    table = Coefficients.load(path)
    if table.schedule["kind"] == "ddpm_time":
        times = torch.tensor(table.schedule["t"], dtype=torch.float64)
    else:
        times = table.sigmas.double()
    fraction = (times[0] - times) / (times[0] - times[-1])
    sigmas = ScheduleTime(model.schedule(settings.rho)(ZERO_SHOT_GRID_STEPS)).sigmas(fraction)
    return dataclasses.replace(table, sigmas=sigmas.float(), schedule={"kind": "edm", "rho": settings.rho},
                               prediction=None, sigma_min=model.sigma_min, sigma_max=model.sigma_max)


def psnr(rmse: float) -> float:
    """PSNR in dB for images in [−1, 1] (peak-to-peak 2)."""
    return 20 * math.log10(2.0 / rmse) if rmse > 0 else math.inf


@torch.no_grad()
def score(solve: Callable, model: DemoModel, pairs, space, batch_size: int = 256, keep: int = 0) -> tuple:
    """Test figures of ``solve(denoise, noise) -> x0`` on ``pairs``, and its first ``keep`` images.

    Figures: ``rmse``/``psnr`` to the teacher's images, ``fd`` the Fréchet distance of all its images to
    the held-out real digits in the classifier's feature space (``space``, a
    :class:`~comfyui_dyweight.demo.classifier.DigitsFeatureSpace`), ``calls`` the model calls per image.
    """
    counter = CallCounter(model.denoise)
    outputs = torch.cat([solve(counter, pairs.subset(slice(start, start + batch_size)).noise)
                         for start in range(0, len(pairs), batch_size)])
    rmse = math.sqrt(float((outputs.double() - pairs.target.double()).pow(2).mean()))
    figures = {"rmse": rmse, "psnr": psnr(rmse), "fd": space.frechet_distance(outputs),
               "calls": counter.calls // math.ceil(len(pairs) / batch_size)}
    return figures, outputs[:keep]


@torch.no_grad()
def evaluate(model: DemoModel, trained: dict, test, settings: DemoSettings, space,
             batch_size: int = 256, progress: bool = True) -> tuple:
    """Test RMSE/PSNR/FD per NFE and solver (see :func:`score`), and the first ``grid_seeds`` images of each;
    ``trained``: NFE → family → Φ (:attr:`DistillResult.candidates`).

    Returns ``(rows, images)``: rows ``{"nfe", "solvers": {name: {"rmse", "psnr", "fd", "calls"}},
    "best_hand_made", "ratios": {family: its RMSE / the best hand-made's}, "ratio" (DyWeight's), "winner"}``
    (solvers in column order) and ``images[nfe][name]`` a tensor [grid_seeds, C, H, W].
    """
    solvers = {nfe: solvers_for(nfe, trained[nfe], model, settings) for nfe in settings.distill.nfe}
    bar = _bar(sum(map(len, solvers.values())), "test set", "solver", progress)
    rows, images = [], {}
    for nfe in settings.distill.nfe:
        figures, images[nfe] = {}, {}
        for name, solve in solvers[nfe].items():
            figures[name], images[nfe][name] = score(solve, model, test.pairs, space, batch_size, settings.grid_seeds)
            if bar is not None:
                bar.update(1)
        best = min(HAND_MADE, key=lambda name: figures[name]["rmse"])
        ratios = {family: figures[family]["rmse"] / figures[best]["rmse"] for family in TRAINED if family in figures}
        rows.append({"nfe": nfe, "solvers": figures, "best_hand_made": best, "ratio": ratios.get("dyweight"),
                     "ratios": ratios, "winner": min(ratios, key=ratios.get)})
    if bar is not None:
        bar.close()
    return rows, images


def _bar(total: int, label: str, unit: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit=unit, dynamic_ncols=True)


# --- reporting -----------------------------------------------------------------------------------
def bar_verdict(rows: list) -> dict:
    """Whether DyWeight's RMSE is ≤ BAR × the best hand-made solver's at each of BAR_NFE present."""
    checked = {row["nfe"]: row["ratio"] <= BAR for row in rows if row["nfe"] in BAR_NFE}
    return {"bar": BAR, "nfe": sorted(checked), "met": bool(checked) and all(checked.values()), "per_nfe": checked}


def column_names(rows: list) -> list:
    """Every solver of any row, in column order (a zero-shot table exists for some NFE only)."""
    present = {name for row in rows for name in row["solvers"]}
    return [name for name in LABELS if name in present]


def markdown_table(rows: list) -> str:
    """RMSE (PSNR dB) to the teacher per solver and NFE, each trained family / the best hand-made, and
    which family wins."""
    names = column_names(rows)
    families = [family for family in TRAINED if family in names]
    header = ["NFE", *(f"**{LABELS[name]}**" if name in TRAINED else LABELS[name] for name in names),
              *(f"{TRAINED[family]} / best hand-made" for family in families), "wins"]
    lines = []
    for row in rows:
        cells = [str(row["nfe"])]
        for name in names:
            figure = row["solvers"].get(name)
            text = "—" if figure is None else f"{figure['rmse']:.4f} ({figure['psnr']:.1f} dB)"
            cells.append(f"**{text}**" if name in TRAINED and figure is not None else text)
        best = row["best_hand_made"]
        versus = "AB3+AFS" if best == "init" else LABELS[best]
        cells += [f"{row['ratios'][family]:.2f} (vs {versus})" for family in families]
        cells.append(TRAINED[row["winner"]])
        lines.append(cells)
    return format_table(header, lines)


def fd_table(rows: list, labels: dict, teacher: str, teacher_fd: float) -> str:
    """Fréchet distance to the held-out real digits per solver (``labels``: name → column) and NFE; the
    teacher's own, the same in every row, is the reference the few-step solvers approach."""
    names = [name for name in labels if any(name in row["solvers"] for row in rows)]
    header = ["NFE", teacher, *(f"**{labels[name]}**" if name in TRAINED else labels[name] for name in names)]
    lines = [[str(row["nfe"]), f"{teacher_fd:.2f}",
              *("—" if name not in row["solvers"] else f"**{row['solvers'][name]['fd']:.2f}**" if name in TRAINED
                else f"{row['solvers'][name]['fd']:.2f}" for name in names)] for row in rows]
    return format_table(header, lines)


def format_table(header: list, lines: list) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return "\n".join(["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
                      *("| " + " | ".join(cells) + " |" for cells in lines)]) + "\n"


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "pack_version": __version__,
            "date": time.strftime("%Y-%m-%d")}


def model_facts(model: DemoModel) -> dict:
    return {"weights": str(model.weights_path.name), "sha256": model.weights_sha256,
            "image_shape": list(model.image_shape), "sigma_min": model.sigma_min, "sigma_max": model.sigma_max,
            "parameters": sum(p.numel() for p in model.module.parameters())}


def nfe_check(rows: list, settings: DemoSettings) -> list:
    """Notes for any solver whose counted model calls differ from the row's NFE (should be none)."""
    return [f"NFE {row['nfe']}: {name} made {figure['calls']} model calls"
            for row in rows for name, figure in row["solvers"].items() if figure["calls"] != row["nfe"]]


