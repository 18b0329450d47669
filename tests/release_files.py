"""The DyWeight release for tests: files in its formats, and a loopback site that serves them.

Files are written by a small writer of the same structure as the release's: EDM ``persistence`` pickles ({"predictor", "loss_fn"}, each wrapped in a
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` call whose ``module_src`` would write a marker
file if it were ever run) and FLUX ``torch.save`` dicts. The fake ``torch_utils``/``solvers`` modules exist
only while writing; the reading side never imports or runs them. :func:`release_server` serves such files
at the release's paths on 127.0.0.1 (it can truncate a response, answer with an error status, ignore
``Range`` or send slowly, and records every request), :func:`table_for` is the pinned table with their
sizes and digests, and :func:`pack_with_table` the pack as ComfyUI loads it with that table.
"""

import contextlib
import dataclasses
import hashlib
import http.server
import json
import pickle
import sys
import threading
import time
import types
from collections import OrderedDict
from pathlib import Path

import torch

from comfyui_dyweight.release import fetch
from comfyui_dyweight.release.fetch import OfficialFile, OfficialTable, official_table

REPO = Path(__file__).resolve().parents[1]

SAMPLERS = ("dyweight_sampler", "heun_sampler", "ipndm_sampler", "dpm_sampler")


@contextlib.contextmanager
def release_modules():
    """``torch_utils.persistence`` and ``solvers`` as the release has them — only while pickling."""
    names = ("torch_utils", "torch_utils.persistence", "solvers")
    saved = {name: sys.modules.get(name) for name in names}
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what the release would run (exec of module_src)
        raise AssertionError("the writer's reconstruct function must never be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package = types.ModuleType("torch_utils")
    package.persistence = persistence
    solvers = types.ModuleType("solvers")
    for name in SAMPLERS:
        def sampler(*args, **kwargs):
            raise AssertionError("a release sampler must never be called")
        sampler.__name__ = sampler.__qualname__ = name
        sampler.__module__ = "solvers"
        setattr(solvers, name, sampler)
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": persistence, "solvers": solvers})
    try:
        yield solvers
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class PersistentObject:
    """Pickles like an EDM ``@persistence.persistent_class`` instance."""

    def __init__(self, class_name, state, module_src):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def marker_source(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src ran')\n"


def window_mask(steps, history):
    offsets = torch.arange(steps)[:, None] - torch.arange(steps)[None, :]
    return ((offsets >= 0) & (offsets < history)).float()


def write_snapshot(path, marker, *, full_rows, t_scale, afs, history, dataset="cifar10", teacher="heun",
                   teacher_steps=35, loss_type="inception", schedule_type="polynomial", rho=7.0,
                   sigma_min=0.002, sigma_max=80.0, t_steps=None, guidance_type=None, guidance_rate=0.0):
    """A ``network-snapshot-*.pkl`` of the release's structure (predictor + loss object)."""
    full = torch.tensor(full_rows, dtype=torch.float32)
    steps = full.shape[0]
    src = marker_source(marker)
    with release_modules() as solvers:
        predictor = PersistentObject("DyWeight_predictor", {
            "training": False,
            "_parameters": OrderedDict(
                hybrid_weights=torch.nn.Parameter(full.clone(), requires_grad=False),
                t_scale=torch.nn.Parameter(torch.tensor(t_scale, dtype=torch.float32), requires_grad=False)),
            "_buffers": OrderedDict(mask=window_mask(steps, history)),
            "_non_persistent_buffers_set": set(), "_forward_hooks": OrderedDict(), "_modules": OrderedDict(),
            "num_steps": steps + 1, "max_history_steps": history, "init_mode": "ipndm",
            "enable_t_scale_learning": True, "t_scale_init_mode": "ones", "afs": afs,
            "guidance_rate": guidance_rate, "guidance_type": guidance_type, "effective_window_size": history - 1,
            "_init_args": (), "_init_kwargs": {"num_steps": steps + 1, "max_history_steps": history, "afs": afs},
        }, src)
        loss = PersistentObject("DyWeight_loss", {
            "num_steps": steps + 1, "solver_stu": solvers.dyweight_sampler,
            "solver_tea": getattr(solvers, f"{teacher}_sampler"), "teacher_steps": teacher_steps,
            "schedule_type": schedule_type, "schedule_rho": rho, "afs": afs, "max_order": 4,
            "sigma_min": sigma_min, "sigma_max": sigma_max, "predict_x0": True, "lower_order_final": True,
            "loss_type": loss_type, "huber_delta": 0.1, "dataset_name": dataset,
            "t_steps": None if t_steps is None else torch.tensor(t_steps, dtype=torch.float32),
            "inception_extractor": None, "_init_args": (),
            "_init_kwargs": {"sampler_stu": "dyweight", "sampler_tea": teacher, "dataset_name": dataset},
        }, src)
        data = pickle.dumps({"predictor": predictor, "loss_fn": loss}, protocol=4)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)


def write_table_snapshot(path, marker, table):
    """A release snapshot holding one table of the reference JSON."""
    return write_snapshot(
        path, marker, full_rows=table["W"], t_scale=table["t_scale"], afs=table["afs"],
        history=table["max_history_steps"], dataset=table["dataset"], teacher=table["teacher"],
        teacher_steps=table["teacher_steps"], loss_type=table["loss_type"], schedule_type=table["schedule_type"],
        rho=table["schedule_rho"], sigma_min=table["stored_sigma_min"], sigma_max=table["stored_sigma_max"],
        t_steps=table["stored_t_steps"], guidance_type=table["guidance_type"], guidance_rate=table["guidance_rate"])


def write_flux(path, full_rows, t_scales, window_size=2):
    """A FLUX checkpoint of the release's structure (``torch.save`` of a dict)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"window_size": window_size,
                "dyweight_weights_raw": torch.tensor(full_rows, dtype=torch.float32),
                "dyweight_t_scales": torch.tensor(t_scales, dtype=torch.float32),
                "dyweight_meta": {"K": len(full_rows), "tscale_low": 0.5, "tscale_high": 1.5}}, path)
    return Path(path)


PIXEL_ROWS = [[1.05, 0, 0, 0], [-0.7, 1.7, 0, 0], [0.34, -1.35, 1.85, 0], [0, 0.4, -1.33, 1.92]]
SD_ROWS = [[0.95, 0, 0, 0], [-0.48, 1.41, 0, 0], [0, -0.44, 1.53, 0], [0, 0, -0.38, 1.38]]
FLUX_ROWS = [[0.88, 0, 0, 0], [-0.13, 1.01, 0, 0], [0, 0.03, 0.92, 0], [0, 0, -0.11, 0.88]]


SD_PATHS = ["exps/00036-mscoco-nfe8/network-snapshot-000005.pkl", "exps/00037-mscoco-nfe12/network-snapshot-000005.pkl"]
FLUX_PATH = "dyweight_flux/checkpoints/dyweight_nfe3.pt"
#: What fetch-official makes of :func:`fixture_release`'s files.
FIXTURE_OUTPUTS = ["dyweight-00036-mscoco-nfe8.safetensors", "dyweight-00037-mscoco-nfe12.safetensors",
                   "dyweight-flux-dyweight_nfe3.safetensors"]


def fixture_release(folder: Path, marker: Path):
    """Two SD1.5 snapshots and a FLUX checkpoint at the release's paths under ``folder``:
    ``({path: bytes}, {path: (full weight rows, history window)})``."""
    sd_rows = [SD_ROWS, [[row[k] * 1.01 for k in range(4)] for row in SD_ROWS]]
    files, rows = {}, {}
    for path, full_rows in zip(SD_PATHS, sd_rows):
        source = write_snapshot(folder / path, marker, full_rows=full_rows, t_scale=[1.0, 0.98, 0.99, 0.9], afs=False,
                                history=2, dataset="ms_coco", teacher_steps=50, loss_type="l2",
                                schedule_type="discrete", rho=1.0, guidance_type="cfg", guidance_rate=7.5)
        files[path], rows[path] = source.read_bytes(), (full_rows, 2)
    flux = write_flux(folder / FLUX_PATH, FLUX_ROWS, [1.01, 0.99, 0.98, 0.97])
    files[FLUX_PATH], rows[FLUX_PATH] = flux.read_bytes(), (FLUX_ROWS, 2)
    return files, rows


# --- a loopback release server --------------------------------------------------------------------------

class ReleaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server = self.server
        path = self.path.lstrip("/")
        server.requests.append((path, self.headers.get("Range")))
        status = server.status.get(path)
        if status:
            self.send_error(status)
            return
        data = server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        if requested and server.ranges:
            start = int(requested.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        cut = server.truncate.get(path)
        if cut is not None:
            body = body[:cut]  # the promised length never arrives: the connection closes early
        for offset in range(0, len(body), 1024):
            self.wfile.write(body[offset:offset + 1024])
            self.wfile.flush()
            if server.delay:
                time.sleep(server.delay)
        self.close_connection = True


@contextlib.contextmanager
def release_server(files: dict):
    """Serve ``{release path: bytes}`` on 127.0.0.1; yields the server (``.url``, ``.requests``, switches)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReleaseHandler)
    server.daemon_threads = True
    server.files, server.requests, server.status, server.truncate = dict(files), [], {}, {}
    server.ranges, server.delay = True, 0.0
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def table_for(files: dict) -> OfficialTable:
    """The pinned table's shape, with the fixture files' sizes and digests."""
    pinned = official_table()
    return dataclasses.replace(pinned, files=tuple(
        OfficialFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), model="fixture")
        for path, data in files.items()))


def pack_with_table(tmp_path: Path, table: OfficialTable) -> Path:
    """The pack as ComfyUI loads it (links to this checkout) with ``table`` in place of the pinned table."""
    pack = tmp_path / "pack" / REPO.name
    pack.mkdir(parents=True)
    for item in REPO.iterdir():
        if item.name not in ("release", ".git"):
            (pack / item.name).symlink_to(item)
    (pack / "release").mkdir()
    for item in (REPO / "release").iterdir():
        if item.name != fetch.TABLE_PATH.name:
            (pack / "release" / item.name).symlink_to(item)
    document = {**dataclasses.asdict(table), "files": [dataclasses.asdict(entry) for entry in table.files]}
    (pack / "release" / fetch.TABLE_PATH.name).write_text(json.dumps(document))
    return pack
