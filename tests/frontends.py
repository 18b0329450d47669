"""The ComfyUI front ends (``comfyui-frontend-package``) the browser test serves, installed on demand.

Two versions: the one the host pins in its ``requirements.txt`` and the newest one this project has
checked, listed in ``tests/requirements-frontend.txt``. Each is installed once with
``pip install --no-deps --target <cache>/comfyui-frontend-package/<version>`` (PyPI only; the cache
is the demo's, ``~/.cache/comfyui-dyweight`` by default) and served with
``main.py --front-end-root <that folder>/comfyui_frontend_package/static``. A copy already installed in
this Python at the wanted version is used as it is.

    python tests/frontends.py [COMFYUI_PATH]     # install both ahead of time (CI, offline runs)
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from comfyui_dyweight.demo.pipeline import default_cache_dir

PACKAGE = "comfyui-frontend-package"
NEWEST_FILE = Path(__file__).resolve().parent / "requirements-frontend.txt"
_PIN = re.compile(r"^\s*comfyui-frontend-package\s*==\s*([0-9][0-9A-Za-z.+-]*)\s*(?:#.*)?$", re.IGNORECASE)


def _pinned_in(requirements: Path) -> str | None:
    try:
        lines = requirements.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        match = _PIN.match(line)
        if match:
            return match.group(1)
    return None


def host_version(host: Path) -> str | None:
    """The version the host's ``requirements.txt`` pins (``comfyui-frontend-package==X``), or None."""
    return _pinned_in(Path(host) / "requirements.txt")


def newest_version() -> str:
    found = _pinned_in(NEWEST_FILE)
    if found is None:
        raise RuntimeError(f"{NEWEST_FILE} must pin {PACKAGE}==<version>")
    return found


def _static(site: Path) -> Path | None:
    static = site / "comfyui_frontend_package" / "static"
    return static if (static / "index.html").is_file() else None


def _installed_here(version: str) -> Path | None:
    try:
        if importlib.metadata.version(PACKAGE) != version:
            return None
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == "index.html" and entry.parts[:2] == ("comfyui_frontend_package", "static"):
            return _static(Path(entry.locate()).parents[2])
    return None


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def frontend_root(version: str) -> Path:
    """The ``static`` folder of ``comfyui-frontend-package==version``, installing it first if needed.

    The install goes to a temporary folder beside the target and is renamed into place when pip has
    finished, so an interrupted run leaves nothing half-installed; concurrent runs wait on a lock.
    Raises RuntimeError, with pip's output, when the install fails.
    """
    here = _installed_here(version)
    if here is not None:
        return here
    folder = default_cache_dir() / PACKAGE
    target = folder / version
    with _locked(folder / f".{version}.lock"):
        found = _static(target)
        if found is not None:
            return found
        shutil.rmtree(target, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder))
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--no-compile", "--target", str(staging), f"{PACKAGE}=={version}"],
                capture_output=True, text=True)
            if result.returncode != 0 or _static(staging) is None:
                raise RuntimeError(f"could not install {PACKAGE}=={version} from PyPI (pip exit {result.returncode}): "
                                   f"{(result.stderr or result.stdout).strip()[-2000:]}")
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _static(target)


def versions(host: Path | None) -> dict[str, str | None]:
    """{"host": the host's pin or None, "newest": the newest checked version}."""
    return {"host": host_version(host) if host is not None else None, "newest": newest_version()}


if __name__ == "__main__":
    host_arg = Path(sys.argv[1]) if len(sys.argv) > 1 else (Path(os.environ["COMFYUI_PATH"])
                                                            if os.environ.get("COMFYUI_PATH") else None)
    for label, wanted in versions(host_arg).items():
        if wanted is None:
            print(f"{label}: no {PACKAGE} pin in {host_arg}/requirements.txt")
            continue
        print(f"{label}: {PACKAGE}=={wanted} -> {frontend_root(wanted)}")
