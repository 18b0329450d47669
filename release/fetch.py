"""Fetch the DyWeight release's SD1.5 and FLUX.1-dev coefficients at a pinned commit and convert them.

The release (GitHub ``Westlake-AGI-Lab/DyWeight``) has no licence file, so the pack never ships its
files; :func:`fetch_official` downloads them when the user asks. What is fetched lives in one table,
``official_files.json`` next to this module: the pinned commit, the base URL and, per file, its path in
the repository, its size and its SHA-256 — the Stable Diffusion 1.5 MS-COCO tables (CFG 7.5, NFE 8, 12,
16, 20; ``exps/<run>/network-snapshot-000005.pkl``) and the FLUX.1-dev ones (NFE 3, 5, 7;
``dyweight_flux/checkpoints/dyweight_nfe*.pt``).

Each file is streamed to ``<name>.partial`` in ``<out>/.dyweight-state/release-<commit>/`` (an HTTP
``Range`` request continues an interrupted download), its size and SHA-256 are checked, and only then is
it renamed into place. When every file is there, :func:`~.convert.import_release_files` converts them —
without running any code from them — into ``dyweight/1`` files in ``out`` (all or nothing), each checked
to load back, and the downloads are removed. A file whose converted Φ is already in ``out`` (its training
record's ``source_sha256`` is the pinned digest) is not downloaded again.

``$COMFYUI_DYWEIGHT_RELEASE_URL`` (or ``base_url=``) replaces the base URL, e.g. with a mirror holding
the same paths; the pinned digests are checked all the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ..coefficients import Coefficients, CoefficientFileError
from ..version import __version__
from .convert import DEFAULT_FLUX_RESOLUTION, file_sha256, flux_resolution_mu, import_release_files

__all__ = ["FetchError", "OfficialFile", "OfficialTable", "BASE_URL_VARIABLE", "fetch_official", "manual_steps",
           "official_table"]

#: The table of pinned release files shipped with the pack.
TABLE_PATH = Path(__file__).with_name("official_files.json")
#: Environment variable that replaces the table's base URL (a mirror with the same paths).
BASE_URL_VARIABLE = "COMFYUI_DYWEIGHT_RELEASE_URL"
#: Seconds to wait for a connection or for the next bytes of a response.
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 16
USER_AGENT = f"ComfyUI-DyWeight/{__version__} (fetch-official)"


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    """One release file: its path in the repository, size in bytes, SHA-256 (hex) and what it holds."""

    path: str
    size: int
    sha256: str
    model: str


@dataclasses.dataclass(frozen=True)
class OfficialTable:
    repository: str
    commit: str
    base_url: str
    files: tuple

    def url(self, entry: OfficialFile, base_url: Optional[str] = None) -> str:
        return f"{(base_url or self.base_url).rstrip('/')}/{urllib.parse.quote(entry.path)}"


def official_table(path=TABLE_PATH) -> OfficialTable:
    """Read the table of pinned files (``official_files.json``)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    for item in document["files"]:
        parts = item["path"].split("/")
        if item["path"].startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"{path}: {item['path']!r} is not a relative path inside the repository")
    files = tuple(OfficialFile(path=item["path"], size=int(item["size"]), sha256=item["sha256"].lower(),
                               model=item["model"]) for item in document["files"])
    return OfficialTable(repository=document["repository"], commit=document["commit"],
                         base_url=document["base_url"], files=files)


class FetchError(RuntimeError):
    """A fetch that failed: ``problem`` says what happened, ``manual`` how to install the files by hand."""

    def __init__(self, problem: str, manual: str = ""):
        self.problem, self.manual = problem, manual
        super().__init__(f"{problem}\n\n{manual}" if manual else problem)


@dataclasses.dataclass(frozen=True)
class FetchResult:
    written: list    # converted files written by this run
    present: list    # converted files that were already in the folder (nothing downloaded for them)
    downloaded: list  # release paths fetched over the network by this run (a resumed file counts)


def staging_folder(out_dir, table: OfficialTable) -> Path:
    """Where downloads wait for conversion: ``<out>/.dyweight-state/release-<commit>``."""
    return Path(out_dir) / ".dyweight-state" / f"release-{table.commit[:7]}"


def manual_steps(out_dir, table: OfficialTable, base_url: Optional[str] = None) -> str:
    """How to install the files without this command's network access (for error messages)."""
    clone = f"https://github.com/{table.repository}"
    urls = "\n".join(f"       {table.url(entry, base_url)}" for entry in table.files)
    sources = " ".join(f"DyWeight/{entry.path}" for entry in table.files)
    return (f"To install them by hand:\n"
            f"  1. get the files of {table.repository} at commit {table.commit}, keeping their folders:\n"
            f"       git clone {clone} DyWeight && git -C DyWeight checkout {table.commit}\n"
            f"     or download each one:\n{urls}\n"
            f"  2. either put them, at the same relative paths, in {staging_folder(out_dir, table)} and run "
            f"`python -m comfyui_dyweight fetch-official --out {out_dir}` again (it checks and converts them "
            f"without downloading), or convert them directly:\n"
            f"       python -m comfyui_dyweight import {sources} --out {out_dir}")


def _converted_sources(out_dir: Path) -> dict:
    """``{source_sha256: path}`` of the release conversions in ``out_dir`` at the settings fetch uses."""
    default_mu = flux_resolution_mu(*DEFAULT_FLUX_RESOLUTION)
    found = {}
    for path in sorted(out_dir.glob("*.safetensors")) if out_dir.is_dir() else ():
        try:
            phi = Coefficients.load(path)
        except CoefficientFileError:
            continue  # not ours to judge here; the Load node reports it
        digest = phi.training.get("source_sha256")
        if isinstance(digest, str) and phi.schedule.get("mu", default_mu) == default_mu:
            found.setdefault(digest, path)
    return found


def _network_problem(url: str, error: BaseException) -> str:
    host = urllib.parse.urlsplit(url).hostname or url
    reason = getattr(error, "reason", error)
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason} for {url}"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer from {host} within the time limit ({url}): offline or blocked network?"
    if isinstance(reason, ssl.SSLError):
        return f"a secure connection to {host} failed ({reason}): a network that intercepts HTTPS?"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {host} ({reason.strerror or reason}): offline or blocked network?"
    text = getattr(reason, "strerror", None) or str(reason)
    return f"cannot connect to {host} ({text}): offline or blocked network?"


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resume_offset(response, offset: int, url: str) -> int:
    """Where the response's bytes start: ``offset`` for a matching 206, 0 when the server sent the whole file."""
    if not offset or response.status == 200:
        return 0
    content_range = response.headers.get("Content-Range", "")
    if response.status == 206 and content_range.startswith(f"bytes {offset}-"):
        return offset
    raise FetchError(f"{url}: the server answered a resumed download with HTTP {response.status} "
                     f"({content_range or 'no Content-Range'}) instead of the bytes from {offset}")


def _download(entry: OfficialFile, url: str, target: Path, timeout: float, report: Callable) -> None:
    """Stream ``url`` to ``target.partial`` (continuing it), check size and digest, rename it to ``target``."""
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > entry.size:
        partial.unlink()
        offset = 0
    if offset < entry.size:
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as error:
            if error.code != 416 or not offset:
                raise
            partial.unlink()  # the server does not have those bytes: start again
            offset = 0
            response = _open(url, 0, timeout)
        with response:
            offset = _resume_offset(response, offset, url)
            received = offset
            report(received)
            with open(partial, "ab" if offset else "wb") as handle:
                try:
                    while block := response.read1(CHUNK):  # what has arrived, for steady progress
                        if received + len(block) > entry.size:
                            handle.close()
                            partial.unlink()
                            raise FetchError(f"{url}: the server sent more than the expected {entry.size} bytes; "
                                             f"nothing was kept")
                        handle.write(block)
                        received += len(block)
                        report(received)
                except (http.client.HTTPException, OSError) as error:
                    raise FetchError(f"{url}: the download broke off after {received} of {entry.size} bytes "
                                     f"({error}); run the fetch again to continue it") from None
                handle.flush()
                os.fsync(handle.fileno())
    size = partial.stat().st_size
    if size < entry.size:
        raise FetchError(f"{url}: truncated download, {size} of {entry.size} bytes arrived; run the fetch again "
                         f"to continue it")
    digest = file_sha256(partial)
    if digest != entry.sha256:
        partial.unlink()
        raise FetchError(f"{url}: SHA-256 {digest} is not the pinned {entry.sha256}; the download was removed and "
                         f"nothing was written (a proxy or mirror that changes files?)")
    os.replace(partial, target)


def fetch_official(out_dir, *, base_url: Optional[str] = None, force: bool = False,
                   timeout: float = DEFAULT_TIMEOUT, progress: Optional[Callable[[dict], None]] = None,
                   table: Optional[OfficialTable] = None) -> FetchResult:
    """Download the pinned release files that are not converted in ``out_dir`` yet, check and convert them.

    Args:
        out_dir: the coefficient folder (normally ``ComfyUI/models/dyweight``).
        base_url: replaces the table's base URL (default ``$COMFYUI_DYWEIGHT_RELEASE_URL``, else the table's).
        force: overwrite converted files of the same name made from other sources (a file converted from
            the pinned digest is kept either way).
        timeout: seconds to wait for a connection or for the next bytes.
        progress: called with events ``{"kind": "present", "file", "output"}`` (already converted),
            ``{"kind": "download", "file", "index", "count", "done", "total"}`` (bytes so far),
            ``{"kind": "convert", "count"}`` and ``{"kind": "done", "written", "present"}``.
        table: the files to fetch (default: the pinned table, :func:`official_table`).

    Raises:
        FetchError: a download failed (network, HTTP status, size or digest); the message has the manual steps.
        ReleaseImportError, UnsafePickleError, FileExistsError: conversion failed (see ``import_release_files``).
    """
    table = table or official_table()
    base_url = base_url or os.environ.get(BASE_URL_VARIABLE) or table.base_url
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise FetchError(f"the base URL must start with https:// or http://, got {base_url!r}")
    out_dir = Path(out_dir)
    emit = progress or (lambda event: None)
    converted = _converted_sources(out_dir)
    present, wanted = [], []
    for entry in table.files:
        if entry.sha256 in converted:
            present.append(converted[entry.sha256])
            emit({"kind": "present", "file": entry.path, "output": converted[entry.sha256].name})
        else:
            wanted.append(entry)
    staging = staging_folder(out_dir, table)
    staged, downloaded = [], []
    for index, entry in enumerate(wanted):
        target = staging / entry.path
        if not (target.is_file() and target.stat().st_size == entry.size and file_sha256(target) == entry.sha256):
            url = table.url(entry, base_url)

            def report(done, entry=entry, index=index):
                emit({"kind": "download", "file": entry.path, "index": index, "count": len(wanted), "done": done,
                      "total": entry.size})
            try:
                _download(entry, url, target, timeout, report)
            except FetchError as error:
                raise FetchError(error.problem, manual_steps(out_dir, table, base_url)) from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
                raise FetchError(_network_problem(url, error), manual_steps(out_dir, table, base_url)) from None
            downloaded.append(entry.path)
        staged.append(target)
    written = []
    if staged:
        emit({"kind": "convert", "count": len(staged)})
        written = import_release_files(staged, out_dir, force=force)
        for path, entry in zip(written, wanted):
            if Coefficients.load(path).training.get("source_sha256") != entry.sha256:
                raise FetchError(f"{path} does not load back as the conversion of {entry.path}")
        shutil.rmtree(staging)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only when nothing else (a trainer's state) is in it
    emit({"kind": "done", "written": [path.name for path in written], "present": [path.name for path in present]})
    return FetchResult(written=written, present=present, downloaded=downloaded)
