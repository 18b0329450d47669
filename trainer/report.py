"""The validation report of a distillation run: the table as Markdown and JSON, and a loss-curve PNG.

Every figure in the table is the held-out RMSE (per latent element) to the teacher's x0, for the
trained Φ, its initialisation and each baseline at the same NFE. The PNG needs matplotlib, which is
optional: without it the plot is skipped with a hint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from ..atomic import atomic_path, write_text_atomic
from .result import DistillResult


def ratio_reference(table: list) -> str:
    """The column the trained Φ is compared with: iPNDM when it is a baseline, else the initialisation."""
    return "ipndm" if all("ipndm" in row["baselines"] for row in table) and table else "init"


def _reference_rmse(row: dict, reference: str) -> Optional[float]:
    return row["init"] if reference == "init" else row["baselines"][reference]


def _figure(value: Optional[float]) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


#: How the table names the solver families.
FAMILY_NAMES = {"dyweight": "DyWeight", "dss": "DSS"}


def validation_markdown(table: list) -> str:
    """A Markdown table: one row per NFE, held-out RMSE to the teacher (lower is better) of each trained
    family and its initialisation, the baselines, and the kept Φ against the reference column."""
    baselines = list(dict.fromkeys(name for row in table for name in row["baselines"]))
    families = list(dict.fromkeys(family for row in table for family in row["families"]))
    reference = ratio_reference(table)
    kept = "kept" if len(families) > 1 else FAMILY_NAMES.get(families[0], families[0]) if families else "Φ"
    header = ["NFE", *(f"{FAMILY_NAMES.get(f, f)}{suffix}" for f in families for suffix in ("", " init")),
              *baselines, f"{kept} / {reference}", "iterations", "status"]
    if len(families) > 1:
        header.insert(1, "kept")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        compared = _reference_rmse(row, reference)
        ratio = row["rmse"] / compared if compared else None
        figures = [_figure(row["families"][f][name]) if f in row["families"] else "—"
                   for f in families for name in ("rmse", "init")]
        cells = [str(row["nfe"]), *([FAMILY_NAMES.get(row["solver"], row["solver"])] if len(families) > 1 else []),
                 *figures, *(_figure(row["baselines"].get(name)) for name in baselines),
                 _figure(ratio), str(row["iterations"]), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    ranged = [row for row in table if row.get("guidance")]
    if ranged:  # a Φ for a CFG range: its ends and middle (trainer/guidance.py)
        lines += ["", "| NFE | guidance | kept Φ | its init |", "|---|---|---|---|"]
        lines += [f"| {row['nfe']} | {point['guidance']:g} | {_figure(point['rmse'])} | {_figure(point['init'])} |"
                  for row in ranged for point in row["guidance"]]
    return "\n".join(lines) + "\n"


def validation_document(result: DistillResult) -> dict:
    """Everything the JSON report holds: table, timings, notes and the loss histories."""
    return {"table": result.table, "timings": result.timings, "notes": result.notes,
            "history": {str(nfe): entries for nfe, entries in result.history.items()}}


def write_report(result: DistillResult, folder, name: str) -> list:
    """Write ``<name>-validation.md``, ``<name>-validation.json`` and ``<name>-loss.png`` (when matplotlib
    is importable) into ``folder``; return the paths written."""
    folder = Path(folder)
    markdown = folder / f"{name}-validation.md"
    document = folder / f"{name}-validation.json"
    notes = "".join(f"\n- {note}" for note in result.notes)
    write_text_atomic(markdown, "Held-out RMSE to the teacher (lower is better).\n\n"
                      + validation_markdown(result.table) + (f"\nNotes:{notes}\n" if notes else ""))
    write_text_atomic(document, json.dumps(validation_document(result), indent=1) + "\n")
    written = [markdown, document]
    plot = folder / f"{name}-loss.png"
    if plot_losses(result.history, plot):
        written.append(plot)
    return written


def plot_losses(history: dict, path) -> bool:
    """Train (per batch, as RMSE) and held-out RMSE against iteration, one panel per NFE, one colour
    per solver family.

    Returns False, after printing a hint, when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib is not installed: skipped the loss plot {path}; `pip install matplotlib` to get it)")
        return False
    figure, axes = plt.subplots(1, max(1, len(history)), figsize=(4.5 * max(1, len(history)), 3.5),
                                squeeze=False, sharey=True)
    for axis, (nfe, families) in zip(axes[0], sorted(history.items())):
        for colour, (family, entries) in enumerate(families.items()):
            name = FAMILY_NAMES.get(family, family)
            if entries["train"]:
                steps, losses = zip(*entries["train"])
                axis.plot(steps, [math.sqrt(loss) for loss in losses], lw=0.8, alpha=0.5, color=f"C{colour}",
                          label=f"{name} train (batch)")
            if entries["validation"]:
                steps, rmse = zip(*entries["validation"])
                axis.plot(steps, rmse, marker="o", ms=3, color=f"C{colour}", label=f"{name} held-out")
        axis.set(title=f"NFE {nfe}", xlabel="iteration", yscale="log")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("RMSE to teacher (DSS train: its path loss, as a root)")
    axes[0][0].legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
    return True
