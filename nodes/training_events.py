"""Training progress for the front end: the latest state of each training node, and live messages.

The trainer calls :func:`publish` with one event at a time::

    publish(node_id, {"kind": "teacher", "done": 3, "total": 32, "eta_s": 40.0})
    publish(node_id, {"kind": "train", "nfe": 5, "iteration": 10, "iterations": 500, "loss": 0.012, "eta_s": 61})
    publish(node_id, {"kind": "validation", "nfe": 5, "iteration": 100, "val_rmse": 0.031, "best": 0.031})
    publish(node_id, {"kind": "done", "nfe": 5, "table": [{"solver": "dyweight", "nfe": 5, "rmse": 0.03, "psnr": 30.4}]})
    # (or the trainer's own row: {"nfe": 5, "solver": "dss", "rmse": 0.03, "baselines": {"ipndm": 0.06},
    #  "families": {"dss": {"rmse": 0.03, "init": 0.05}, "dyweight": {"rmse": 0.04, "init": 0.05}}})
    publish(node_id, {"kind": "error", "message": "..."})

Each event is folded into a per-node state (bounded: at most ``MAX_POINTS`` points per curve, at most
``MAX_JOBS`` nodes) that ``GET /dyweight/training[/{node}]`` returns, so a reloaded page can restore
a running or finished job, and is sent to every open page as the server message
``dyweight.training`` (``{"node": <id>, "kind": ..., ...}``) when a ComfyUI server is running.

The folding rule is mirrored by ``web/lib/training_view.js`` (``applyTrainingEvent``); both are
checked against ``web/tests/fixtures/training_events.json``. Pure Python, thread-safe; never imports
ComfyUI (the server is looked up in ``sys.modules``).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import threading
import time
from collections import OrderedDict
from typing import Optional

# The pack's logger (``constants.LOG``); this module imports no sibling, so it loads without a host.
LOG = logging.getLogger("comfyui_dyweight")

EVENT_NAME = "dyweight.training"
KINDS = ("teacher", "train", "validation", "done", "error")
MAX_POINTS = 512
MAX_JOBS = 32
MAX_TABLE_ROWS = 64
MAX_MESSAGE = 2000

_FIELDS = {
    "teacher": ("done", "total", "eta_s"),
    "train": ("nfe", "iteration", "iterations", "loss", "eta_s"),
    "validation": ("nfe", "iteration", "val_rmse", "best"),
    "done": ("nfe", "table"),
    "error": ("message", "nfe"),
}

_lock = threading.Lock()
_jobs: "OrderedDict[str, dict]" = OrderedDict()


# --- the folding rule (mirrored in web/lib/training_view.js) ---------------------------------------
def new_state(node: str) -> dict:
    """The state of a node before any event."""
    return {
        "node": node, "status": None, "started": None, "updated": None,
        "teacher": None, "nfe": None, "iteration": None, "iterations": None, "loss": None,
        "eta_s": None, "best": None, "series": {}, "table": [], "message": None,
    }


def _starts_new_job(state: dict, event: dict) -> bool:
    """After ``done``/``error``, a teacher event or a train event that goes back in iterations is a new run."""
    if state["status"] not in ("done", "error"):
        return False
    kind = event["kind"]
    if kind == "teacher":
        return True
    if kind != "train":
        return False
    if state["status"] == "error":
        return True
    series = state["series"].get(_series_key(event.get("nfe")))
    last = series["train"][-1][0] if series and series["train"] else None
    iteration = event.get("iteration")
    return last is not None and iteration is not None and iteration <= last


def apply_event(state: dict, event: dict, now: float) -> dict:
    """Fold one (clean) event into ``state``; returns the new state (``state`` may be reused)."""
    kind = event["kind"]
    if _starts_new_job(state, event):
        state = new_state(state["node"])
    state["status"] = kind
    if state["started"] is None:
        state["started"] = now
    state["updated"] = now
    if event.get("nfe") is not None:
        state["nfe"] = event["nfe"]
    if kind == "teacher":
        state["teacher"] = {"done": event.get("done"), "total": event.get("total"), "eta_s": event.get("eta_s")}
        state["eta_s"] = event.get("eta_s")
    elif kind == "train":
        for name in ("iteration", "iterations", "loss", "eta_s"):
            state[name] = event.get(name)
        _push(_series(state, event.get("nfe"))["train"], event.get("iteration"), event.get("loss"))
    elif kind == "validation":
        series = _series(state, event.get("nfe"))
        _push(series["val"], event.get("iteration"), event.get("val_rmse"))
        best = event.get("best")
        if best is None:
            candidates = [value for value in (series["best"], event.get("val_rmse")) if value is not None]
            best = min(candidates) if candidates else None
        series["best"] = best
        state["best"] = best
    elif kind == "done":
        state["eta_s"] = 0
        _merge_table(state["table"], event.get("table") or [])
    elif kind == "error":
        state["message"] = event.get("message") or "training failed"
        state["eta_s"] = None
    return state


def _series_key(nfe) -> str:
    return "?" if nfe is None else str(nfe)


def _series(state: dict, nfe) -> dict:
    return state["series"].setdefault(_series_key(nfe), {"train": [], "val": [], "best": None})


def _push(points: list, x, y) -> None:
    if x is None or y is None:
        return
    points.append([x, y])
    if len(points) > MAX_POINTS:  # halve the resolution, keeping the first and the newest point
        last = len(points) - 1
        points[:] = [point for index, point in enumerate(points) if index % 2 == 0 or index == last]


def _merge_table(table: list, rows: list) -> None:
    for row in rows:
        key = (row.get("solver"), row.get("nfe"))
        for index, existing in enumerate(table):
            if (existing.get("solver"), existing.get("nfe")) == key:
                table[index] = row
                break
        else:
            table.append(row)
    del table[:-MAX_TABLE_ROWS]


# --- cleaning ------------------------------------------------------------------------------------
def _finite_number(value) -> Optional[float]:
    """A finite int or float from a Python, torch or numpy scalar; ``None`` for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    item = getattr(value, "item", None)  # torch / numpy scalars
    if callable(item):
        try:
            value = item()
        except Exception:  # noqa: BLE001 - a non-scalar tensor is not a number
            return None
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _integer(value) -> Optional[int]:
    value = _finite_number(value)
    return None if value is None else int(value)


def _clipped_text(value, limit: int = 200) -> Optional[str]:
    return None if value is None else str(value)[:limit]


def clean_event(event: dict) -> dict:
    """The event as strict JSON with only the documented fields (unknown kinds raise ``ValueError``)."""
    if not isinstance(event, dict) or event.get("kind") not in KINDS:
        raise ValueError(f"a DyWeight training event needs 'kind' in {KINDS}, got {event!r}"[:300])
    kind = event["kind"]
    clean: dict = {"kind": kind}
    for name in _FIELDS[kind]:
        if name not in event:
            continue
        value = event[name]
        if name in ("nfe", "iteration", "iterations", "done", "total"):
            clean[name] = _integer(value)
        elif name == "message":
            clean[name] = _clipped_text(value, MAX_MESSAGE)
        elif name == "table":
            clean[name] = [_clean_row(row) for row in table_rows(value, event.get("nfe"))][:MAX_TABLE_ROWS]
        else:
            clean[name] = _finite_number(value)
    return clean


def table_rows(table, nfe=None) -> list:
    """``[{solver, nfe, rmse, psnr?}, ...]`` from a list of such rows, one such row, or the trainer's
    per-NFE row ``{"nfe", "solver", "rmse", "families": {family: {"rmse", "init", …}}, "baselines": {name:
    rmse}}`` (trainer/result.py): each family, its initialisation (``<family> init``), each baseline."""
    if isinstance(table, dict):
        if not isinstance(table.get("families"), dict):
            return [table] if "solver" in table else []
        row_nfe = table.get("nfe", nfe)
        rows = []
        for family, figures in table["families"].items():
            if isinstance(figures, dict):
                rows += [{"solver": family, "nfe": row_nfe, "rmse": figures.get("rmse")},
                         {"solver": f"{family} init", "nfe": row_nfe, "rmse": figures.get("init")}]
        baselines = table.get("baselines")
        if isinstance(baselines, dict):
            rows += [{"solver": name, "nfe": row_nfe, "rmse": rmse} for name, rmse in baselines.items()]
        return rows
    if isinstance(table, (list, tuple)):
        return [row for row in table if isinstance(row, dict)]
    return []


def _clean_row(row: dict) -> dict:
    clean = {"solver": _clipped_text(row.get("solver"), 80), "nfe": _integer(row.get("nfe")),
             "rmse": _finite_number(row.get("rmse"))}
    if "psnr" in row:
        clean["psnr"] = _finite_number(row.get("psnr"))
    return clean


# --- public API ------------------------------------------------------------------------------------
def publish(node_id, event: dict) -> Optional[dict]:
    """Record ``event`` for ``node_id`` and send it to the open pages; returns the message sent.

    Never raises for a UI problem (a malformed event is logged and dropped, a closed socket ignored),
    so reporting progress cannot break a training run.
    """
    node = str(node_id)
    try:
        clean = clean_event(event)
    except ValueError as error:
        LOG.warning("DyWeight: %s", error)
        return None
    message = {"node": node, **clean}
    with _lock:
        state = _jobs.pop(node, None) or new_state(node)
        _jobs[node] = apply_event(state, clean, time.time())
        while len(_jobs) > MAX_JOBS:
            _jobs.popitem(last=False)
    _send(message)
    return message


def training_state(node_id=None):
    """A copy of one node's state (``None`` if unknown), or of every node's (a list, oldest first).

    Each state carries ``age_s``: seconds since its last event (the page counts the ETA down from it).
    """
    now = time.time()
    with _lock:
        if node_id is None:
            states = [copy.deepcopy(state) for state in _jobs.values()]
        else:
            state = _jobs.get(str(node_id))
            states = [copy.deepcopy(state)] if state is not None else []
    for state in states:
        state["age_s"] = max(0.0, now - state["updated"]) if state["updated"] is not None else None
    if node_id is None:
        return states
    return states[0] if states else None


def clear(node_id=None) -> None:
    """Forget one node's state, or all (tests)."""
    with _lock:
        if node_id is None:
            _jobs.clear()
        else:
            _jobs.pop(str(node_id), None)


def prompt_server():
    """``PromptServer.instance`` of the running ComfyUI, or ``None`` when there is none (tests, scripts).

    Looked up in ``sys.modules`` (ComfyUI's main.py imports ``server``), never imported here.
    """
    server_module = sys.modules.get("server")
    return getattr(getattr(server_module, "PromptServer", None), "instance", None)


def _send(message: dict) -> None:
    server = prompt_server()
    if server is None or not hasattr(server, "send_sync"):
        return
    try:
        server.send_sync(EVENT_NAME, message)
    except Exception as error:  # noqa: BLE001 - the page is a viewer; training goes on without it
        LOG.debug("DyWeight: could not send a training update: %s", error)
