"""The "fetch the paper's coefficients" button of Load DyWeight Coefficients: one background fetch at a time.

:func:`start_fetch` runs :func:`~comfyui_dyweight.release.fetch.fetch_official` into the first folder
registered for ``dyweight`` (normally ``models/dyweight``) in a thread; :func:`fetch_state` is what the
front end polls. When the fetch ends, ComfyUI's cached file list of that folder is dropped, so the new
files are in the Load node's list (``/object_info``) without a restart.
"""

from __future__ import annotations

import threading
import time

from ..release.fetch import FetchError, fetch_official
from . import folders
from .constants import LOG

_lock = threading.Lock()
_state: dict = {"status": "idle"}


def fetch_state() -> dict:
    """``{"status": "idle" | "running" | "done" | "error", …}`` with the progress of the current or last fetch:
    ``folder``, ``file``, ``index`` / ``count`` (downloads), ``done`` / ``total`` (bytes of ``file``),
    ``phase`` (``check``, ``download``, ``convert``), ``present``, then ``written`` or ``error`` and ``manual``."""
    with _lock:
        return dict(_state)


def _update(**changes) -> None:
    with _lock:
        _state.update(changes, updated=time.time())


def _on_progress(event: dict) -> None:
    kind = event["kind"]
    if kind == "download":
        _update(phase="download", file=event["file"], index=event["index"], count=event["count"],
                done=event["done"], total=event["total"])
    elif kind == "present":
        with _lock:
            _state["present"] = [*_state.get("present", []), event["output"]]
    elif kind == "convert":
        _update(phase="convert", file=None)


def _run(out_dir) -> None:
    try:
        result = fetch_official(out_dir, progress=_on_progress)
    except FetchError as error:
        outcome = {"status": "error", "error": error.problem, "manual": error.manual}
    except Exception as error:  # noqa: BLE001 - reported to the page; the server keeps running
        LOG.exception("DyWeight: fetching the paper's coefficients failed")
        outcome = {"status": "error", "error": f"{type(error).__name__}: {error}", "manual": ""}
    else:
        outcome = {"status": "done", "phase": None, "file": None, "written": [path.name for path in result.written],
                   "present": [path.name for path in result.present]}
    folders.forget_listing()  # before the page hears "done" and asks for the list
    _update(**outcome)


def start_fetch() -> tuple:
    """Start a fetch unless one is running; ``(started, state)``."""
    with _lock:
        if _state.get("status") == "running":
            return False, dict(_state)
        out_dir = folders.user_folders()[0]
        _state.clear()
        _state.update(status="running", phase="check", folder=str(out_dir), present=[], started=time.time(),
                      updated=time.time())
        state = dict(_state)
    threading.Thread(target=_run, args=(out_dir,), name="dyweight-fetch-official", daemon=True).start()
    return True, state
