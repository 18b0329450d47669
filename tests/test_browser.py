"""The front end in a real browser: headless Chromium driven over the DevTools protocol (stdlib only).

* ``test_chart_page``: the drawing modules (web/lib) on a static page with the JS fixtures — needs only
  Chromium.
* ``test_charts_in_comfyui[host|newest]``: a real ComfyUI server (tests/comfy_server.py) with the pack,
  serving the ``comfyui-frontend-package`` the host pins or the newest one checked
  (tests/requirements-frontend.txt), installed on demand by tests/frontends.py; a workflow holding Load
  DyWeight Coefficients, KSampler (DyWeight) and, when registered, Train DyWeight Coefficients is loaded
  by script; the charts must appear, fed by the pack's routes, the node help must show
  web/docs/KSamplerDyWeight.md, and no console error may come from the extension.

Both save screenshots under pytest's tmp dir and print their paths. They skip, with the reason printed,
when Chromium (Debian: ``apt-get install chromium``) or a current host is missing; a front end that
cannot be installed from PyPI counts as a missing host (a failure under COMFY_HOST_REQUIRED=1).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--no-default-browser-check",
                  "--hide-scrollbars", "--mute-audio", "--disable-extensions", "--remote-debugging-pipe")


def _skip(reason):
    print(f"\n[test_browser] SKIP: {reason}", file=sys.stderr)
    pytest.skip(reason)


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


# --- a tiny DevTools-protocol client over --remote-debugging-pipe (fd 3: commands in, fd 4: out) -------
class Browser:
    def __init__(self, binary, width=1400, height=900):
        self.profile = tempfile.mkdtemp(prefix="dyweight-chromium-")
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        # move the child's ends above the fds that dup2 will overwrite
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            preexec_fn=wire, pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(child_in)
        os.close(child_out)
        self._next = 0
        self._lock = threading.Lock()
        self._replies: dict = {}
        self._arrived = threading.Condition()
        self.events: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = None
        self.width, self.height = width, height

    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child_r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    self._replies["closed"] = True
                    self._arrived.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._arrived:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._arrived.notify_all()

    def send(self, method, params=None, session=True, timeout=60.0):
        with self._lock:
            self._next += 1
            ident = self._next
        message = {"id": ident, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._arrived:
            while ident not in self._replies:
                if self._replies.get("closed"):
                    raise RuntimeError("Chromium closed the DevTools pipe")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to {method} within {timeout}s")
                self._arrived.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open_page(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url):
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression, timeout=60.0):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"page script failed: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression, timeout=90.0, what="condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except RuntimeError as error:
                last = str(error)
            if last is True:
                return
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what} ({expression}); last value {last!r}; "
                             f"console: {self.console_lines()[-20:]}")

    def click(self, x, y):
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "buttons": 0 if kind == "mouseReleased" else 1, "clickCount": 1})

    def screenshot(self, path, clip=None):
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def console_lines(self):
        lines = []
        for event in list(self.events):
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                lines.append((params.get("type"), text))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append(("exception", f"{details.get('text')} {details.get('exception', {}).get('description', '')} "
                                           f"{details.get('url', '')}"))
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                lines.append((entry.get("level"), f"{entry.get('text')} {entry.get('url', '')}"))
        return lines

    def errors(self):
        return [text for kind, text in self.console_lines() if kind in ("error", "exception")]

    def close(self):
        with contextlib.suppress(Exception):
            self.send("Browser.close", session=False, timeout=5)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        for fd in (self._to_child_w, self._from_child_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    binary = chromium_binary()
    if binary is None:
        _skip("Chromium is not installed (Debian: apt-get install chromium)")
    instance = Browser(binary)
    try:
        instance.open_page()
        yield instance
    finally:
        instance.close()


# --- 1: the drawing modules on a static page ---------------------------------------------------------
STATIC_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>DyWeight charts</title><link rel="icon" href="data:,">
<style>
  body { margin: 0; background: #202020; color: #ddd; font: 13px system-ui, sans-serif; }
  .row { display: flex; gap: 24px; padding: 20px; align-items: flex-start; flex-wrap: wrap; }
  .node { background: #353535; border-radius: 8px; padding: 8px 10px 10px; box-shadow: 0 2px 8px #0008; }
  .node h3 { margin: 0 0 8px; font-size: 13px; font-weight: 600; color: #eee; }
  canvas { display: block; }
</style></head>
<body><div class="row" id="row"></div>
<script type="module">
import { phiView, MODES } from "./lib/phi_view.js";
import { applyTrainingEvent, trainingView } from "./lib/training_view.js";
import { drawPhi, phiLayout } from "./lib/phi_chart.js";
import { drawTraining, trainingLayout } from "./lib/training_chart.js";

function panel(title, width, layoutOf, draw) {
  const node = document.createElement("div");
  node.className = "node";
  node.innerHTML = `<h3>${title}</h3>`;
  const canvas = document.createElement("canvas");
  const ratio = window.devicePixelRatio || 1;
  const height = layoutOf(width).height;
  canvas.width = width * ratio; canvas.height = height * ratio;
  canvas.style.width = width + "px"; canvas.style.height = height + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  draw(ctx, width);
  node.appendChild(canvas);
  document.getElementById("row").appendChild(node);
}

const load = (name) => fetch("./tests/fixtures/" + name).then((r) => r.json());
const [trained, ab, events] = await Promise.all([load("phi_trained.json"), load("phi_ab_nfe5.json"), load("training_events.json")]);
const tv = phiView(trained, { origin: "file" });
const av = phiView(ab, { origin: "preset before run" });
panel("Load DyWeight Coefficients", 380, (w) => phiLayout(tv, w), (ctx, w) => drawPhi(ctx, tv, w, {}));
panel("KSampler (DyWeight)", 380, (w) => phiLayout(av, w), (ctx, w) => drawPhi(ctx, av, w, {}));
panel("\\u0394 vs Adams\\u2013Bashforth", 380, (w) => phiLayout(tv, w), (ctx, w) => drawPhi(ctx, tv, w, { mode: MODES.DELTA }));

let done = null;
events.events.filter((e) => e.node === "5").forEach((e, i) => { done = applyTrainingEvent(done, e, i); });
let running = null;
for (let i = 1; i <= 300; i++) {
  running = applyTrainingEvent(running, { node: "2", kind: "train", nfe: 5, iteration: i, iterations: 500,
    loss: 0.02 + 0.6 * Math.exp(-i / 40) * (1 + 0.15 * Math.sin(i * 1.7)), eta_s: (500 - i) * 0.8 }, i);
  if (i % 50 === 0) running = applyTrainingEvent(running, { node: "2", kind: "validation", nfe: 5, iteration: i,
    val_rmse: 0.05 + 0.5 * Math.exp(-i / 50) }, i);
}
const runView = trainingView(running, { receivedAtMs: Date.now(), nowMs: Date.now() });
const doneView = trainingView(done, {});
panel("Train DyWeight Coefficients (running)", 380, (w) => trainingLayout(runView, w), (ctx, w) => drawTraining(ctx, runView, w));
panel("Train DyWeight Coefficients (done)", 380, (w) => trainingLayout(doneView, w), (ctx, w) => drawTraining(ctx, doneView, w));
window.__dyweightDone = true;
</script></body></html>
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def static_server(root):
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_chart_page(browser, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(WEB / "lib", site / "lib")
    shutil.copytree(WEB / "tests" / "fixtures", site / "tests" / "fixtures")
    (site / "index.html").write_text(STATIC_PAGE, encoding="utf-8")
    with static_server(site) as url:
        browser.navigate(url + "/index.html")
        browser.wait_for("window.__dyweightDone === true", timeout=60, what="the chart page")
        size = browser.evaluate("JSON.stringify([document.body.scrollWidth, document.body.scrollHeight])")
        shot = browser.screenshot(tmp_path / "dyweight_charts_static.png")
    print(f"\n[test_browser] static chart page screenshot: {shot} (page {size})")
    assert shot.stat().st_size > 10_000
    assert browser.errors() == []
    canvases = browser.evaluate("document.querySelectorAll('canvas').length")
    assert canvases == 5


# --- 2: the extension inside a real ComfyUI ----------------------------------------------------------
def _trained_phi_file(folder: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import test_routes
    finally:
        sys.path.pop(0)
    folder.mkdir(parents=True, exist_ok=True)
    test_routes.trained_example().save(folder / "dyweight-sd15-nfe5.safetensors")
    return "dyweight-sd15-nfe5.safetensors"


WORKFLOW_SCRIPT = """
(async () => {
  const app = window.comfyAPI.app.app;
  const api = window.comfyAPI.api.api;
  const info = await (await api.fetchApi("/object_info")).json();
  const nodes = [
    { id: 1, type: "DyWeightLoadCoefficients", pos: [40, 60], size: [400, 380], flags: {}, order: 0, mode: 0,
      inputs: [], outputs: [], properties: {}, widgets_values: [%(file)s] },
    { id: 2, type: "KSamplerDyWeight", pos: [480, 60], size: [400, 560], flags: {}, order: 1, mode: 0,
      inputs: [], outputs: [], properties: {}, widgets_values: [1, "fixed", "5", 7, 1] },
  ];
  const hasTrain = "DyWeightTrain" in info;
  if (hasTrain) nodes.push({ id: 3, type: "DyWeightTrain", pos: [920, 60], size: [400, 400], flags: {}, order: 2,
    mode: 0, inputs: [], outputs: [], properties: {} });
  await app.loadGraphData({ last_node_id: 3, last_link_id: 0, nodes, links: [], groups: [], config: {}, extra: {},
    version: 0.4 }, true, false);
  app.canvas.ds.offset = [10, 40];
  app.canvas.ds.scale = 1;
  app.canvas.setDirty(true, true);
  return JSON.stringify({ hasTrain, types: app.graph.nodes.map((n) => n.type) });
})()
"""

FEED_TRAINING = """
(() => {
  const api = window.comfyAPI.api.api;
  const send = (detail) => api.dispatchCustomEvent("dyweight.training", detail);
  for (let i = 1; i <= 240; i++) {
    send({ node: "3", kind: "train", nfe: 5, iteration: i, iterations: 400,
           loss: 0.02 + 0.6 * Math.exp(-i / 40) * (1 + 0.15 * Math.sin(i * 1.7)), eta_s: (400 - i) * 0.7 });
    if (i % 40 === 0) send({ node: "3", kind: "validation", nfe: 5, iteration: i, val_rmse: 0.05 + 0.5 * Math.exp(-i / 50) });
  }
  return true;
})()
"""


HELP_NODE = "KSamplerDyWeight"
# Opens the front end's node help for a node of the loaded workflow, where this front end shows it: the
# right side panel's Info tab for the selected node (newer front ends, which have a "rightSidePanel"
# store), else the node library's help page ("?" next to a node; the "nodeHelp" store).
OPEN_HELP = """
(async () => {
  const app = window.comfyAPI.app.app;
  const stores = document.querySelector("#vue-app").__vue_app__.config.globalProperties.$pinia._s;
  const node = app.graph.getNodeById(%(id)s);
  if (stores.has("rightSidePanel")) {
    app.canvas.deselectAll();
    app.canvas.selectNode(node);
    stores.get("rightSidePanel").openPanel("info");
    return ["rightSidePanel", stores.get("nodeDef").nodeDefsByName[node.type].python_module];
  }
  if (stores.get("sidebarTab")?.activeSidebarTabId !== "node-library")
    await app.extensionManager.command.execute("Workspace.ToggleSidebarTab.node-library");
  for (let i = 0; i < 100 && !stores.has("nodeHelp"); i++) await new Promise((r) => setTimeout(r, 100));
  const definition = stores.get("nodeDef").nodeDefsByName[node.type];
  stores.get("nodeHelp").openHelp(definition);
  return ["nodeHelp", definition.python_module];
})()
"""


def _show_node_help(browser, server, graph_id, node_id, path):
    """The node's help page: served from web/docs/ under the pack's folder and shown, rendered from that
    markdown, by the front end's node help (OPEN_HELP); returns (where it was shown, screenshot)."""
    page = (WEB / "docs" / f"{node_id}.md").read_text(encoding="utf-8")
    with urllib.request.urlopen(f"{server.url}/extensions/{REPO.name}/docs/{node_id}.md", timeout=30) as reply:
        assert reply.status == 200 and reply.read().decode("utf-8") == page
    where, module = browser.evaluate(OPEN_HELP % {"id": graph_id})
    assert module == f"custom_nodes.{REPO.name}", module
    first_line = next(line for line in page.splitlines()[1:] if line.strip())
    browser.wait_for(f"document.body.innerText.includes({json.dumps(first_line)})", timeout=30,
                     what=f"the help panel to show {node_id}.md")
    time.sleep(0.5)
    return where, browser.screenshot(path)


def _comfyui_with_frontend(base: Path, which: str):
    """``(comfy_server module, front-end root, its version)`` for a server under ``base`` serving the ``which``
    ("host" or "newest") front end; skips without a current host."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import comfy_host
        import comfy_server
        import frontends
    except ImportError as error:
        _skip(f"the test-host helpers are not importable: {error}")
    finally:
        sys.path.pop(0)
    host = comfy_host.find_comfyui()
    if host is None:
        _skip(comfy_host.NO_HOST_REASON)
    if not (host / "comfy_api").is_dir():
        _skip(f"the ComfyUI at {host} is too old for the current front end")
    version = frontends.versions(host)[which]
    if version is None:
        _skip(f"the ComfyUI at {host} pins no comfyui-frontend-package in its requirements.txt")
    try:
        frontend = frontends.frontend_root(version)
    except RuntimeError as error:
        comfy_host._skip(str(error), missing_host=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return comfy_server, frontend, version


def _open_workflow(browser, server, file_name: str) -> dict:
    """The ComfyUI page with Load DyWeight Coefficients (node 1, ``file_name``), KSampler (DyWeight) (node 2)
    and, where the server has it, Train DyWeight Coefficients (node 3)."""
    browser.navigate(server.url + "/")
    browser.wait_for("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app && "
                     "window.comfyAPI.app.app.graph && window.comfyAPI.app.app.canvas)",
                     timeout=120, what="the ComfyUI front end")
    return json.loads(browser.evaluate(WORKFLOW_SCRIPT % {"file": json.dumps(file_name)}))


@pytest.mark.parametrize("which", ["host", "newest"])
def test_charts_in_comfyui(browser, tmp_path, which):
    base = tmp_path / "comfy"
    comfy_server, frontend, version = _comfyui_with_frontend(base, which)
    name = _trained_phi_file(base / "models" / "dyweight")
    with comfy_server.run_server(base, custom_nodes=[REPO], extra_args=["--front-end-root", str(frontend)]) as server:
        listing = server.get_json("/api/dyweight/coefficients")["coefficients"]
        assert any(entry["name"] == name and entry.get("trained") for entry in listing), listing
        status, refused = server._request("GET", "/api/dyweight/coefficients/..%2F..%2Fcomfy.settings.json")
        assert status == 400 and "'..'" in refused["error"], (status, refused)
        status, preset = server._request("GET", "/api/dyweight/preset?nfe=5")
        assert status == 200 and preset["name"] == "shipped/adams_bashforth/ab-nfe5.safetensors"
        if "DyWeightLoadCoefficients" not in server.object_info():
            _skip("the pack's nodes are not registered on this server yet")

        loaded = _open_workflow(browser, server, name)
        ready = ("(() => { const g = window.comfyAPI.app.app.graph;"
                 " const a = g.getNodeById(1), b = g.getNodeById(2);"
                 " return !!(a && b && a.dyweightPanel && b.dyweightPanel &&"
                 " a.dyweightPanel.view && a.dyweightPanel.view.ok && a.dyweightPanel.view.trained &&"
                 " b.dyweightPanel.view && b.dyweightPanel.view.ok); })()")
        browser.wait_for(ready, timeout=60, what="the Φ charts on both nodes")
        # a new selection in the combo redraws the chart from the route
        switch = ("(() => { const n = window.comfyAPI.app.app.graph.getNodeById(1);"
                  " const w = n.widgets.find((w) => w.name === 'coefficients');"
                  " w.value = %s; w.callback && w.callback(w.value); return true; })()")
        browser.evaluate(switch % json.dumps("shipped/adams_bashforth/ab-nfe3.safetensors"))
        browser.wait_for("window.comfyAPI.app.app.graph.getNodeById(1).dyweightPanel.view.title === 'ab-nfe3.safetensors'",
                         timeout=30, what="the chart to follow the combo")
        browser.evaluate(switch % json.dumps(name))
        browser.wait_for(ready, timeout=30, what="the trained Φ again")
        # a real click on the heat map reaches the DOM widget and switches to "Δ vs AB" (and back)
        where = json.loads(browser.evaluate(
            "JSON.stringify((() => { const p = window.comfyAPI.app.app.graph.getNodeById(1).dyweightPanel;"
            " const r = p.canvas.getBoundingClientRect(), h = p.layoutCache.heat, k = r.width / p.width;"
            " return [r.left + (h.x + 2.5 * h.cellW) * k, r.top + (h.y + 0.5 * h.cellH) * k]; })())"))
        mode = "window.comfyAPI.app.app.graph.getNodeById(1).dyweightPanel.mode"
        for expected in ("delta", "weights"):
            browser.click(*where)
            browser.wait_for(f"{mode} === '{expected}'", timeout=10, what=f"the heat map to show {expected}")
        if loaded["hasTrain"]:
            browser.evaluate(FEED_TRAINING)
            browser.wait_for("(() => { const n = window.comfyAPI.app.app.graph.getNodeById(3);"
                             " return !!(n && n.dyweightTraining && n.dyweightTraining.entry &&"
                             " n.dyweightTraining.entry.state.iteration === 240); })()",
                             timeout=30, what="the training panel")
        facts = json.loads(browser.evaluate(
            "JSON.stringify((() => { const g = window.comfyAPI.app.app.graph;"
            " const a = g.getNodeById(1).dyweightPanel, b = g.getNodeById(2).dyweightPanel;"
            " return { a: [a.view.title, a.view.origin, a.height, a.canvas.width],"
            "          b: [b.view.title, b.view.origin, b.view.isReference] }; })())"))
        time.sleep(1.0)  # let the canvas and the DOM widgets settle
        shot = browser.screenshot(tmp_path / "dyweight_charts_comfyui.png")
        help_where, help_shot = _show_node_help(browser, server, 2, HELP_NODE, tmp_path / "dyweight_help_comfyui.png")
        errors = browser.errors()
    print(f"\n[test_browser] comfyui-frontend-package {version} ({which}): screenshots {shot} and {help_shot} "
          f"({HELP_NODE}.md shown via {help_where})"
          f"\n[test_browser] nodes: {loaded}; charts: {facts}")
    # The help panel asks for the page in the UI's locale first (docs/<NodeId>/en.md); the pack ships the
    # locale-free docs/<NodeId>.md that the front end falls back to, so that first request is a 404.
    locale_probe = f"/extensions/{REPO.name}/docs/{HELP_NODE}/"
    expected = [e for e in errors if locale_probe in e and "404" in e]
    if expected:
        print("[test_browser] the front end's locale-specific help probe (404, expected):\n  " + "\n  ".join(expected))
    others = [e for e in errors if e not in expected]
    if others:
        print("[test_browser] console errors (not from the pack):\n  " + "\n  ".join(others))
    ours = [e for e in others if "dyweight" in e.lower() or "/extensions/" in e]
    assert ours == [], ours
    assert facts["a"][0] == name and facts["a"][1] == "file" and facts["a"][2] > 150
    assert facts["b"][0] == "ab-nfe5.safetensors" and facts["b"][2] is True
    assert shot.stat().st_size > 20_000


@pytest.mark.parametrize("which", ["host", "newest"])
def test_fetch_button_in_comfyui(browser, tmp_path, which):
    """The Load node's button in the real front end: the fetch runs against a loopback release site and the
    loader's list holds the new files without a reload."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from release_files import FIXTURE_OUTPUTS, fixture_release, pack_with_table, release_server, table_for
    finally:
        sys.path.pop(0)
    from comfyui_dyweight.release.fetch import BASE_URL_VARIABLE

    base = tmp_path / "comfy"
    comfy_server, frontend, version = _comfyui_with_frontend(base, which)
    files, _ = fixture_release(tmp_path / "release", tmp_path / "MARKER-code-ran")
    pack = pack_with_table(tmp_path, table_for(files))
    with release_server(files) as site:
        env = {**os.environ, BASE_URL_VARIABLE: site.url}
        with comfy_server.run_server(base, custom_nodes=[pack], env=env,
                                     extra_args=["--front-end-root", str(frontend)]) as server:
            _open_workflow(browser, server, "shipped/adams_bashforth/ab-nfe5.safetensors")
            node = "window.comfyAPI.app.app.graph.getNodeById(1)"
            button = f"{node}.widgets.find((w) => w.type === 'button')"
            drawn = f"!!({node} && {button} && {button}.y > 0 && {node}.dyweightPanel && {node}.dyweightPanel.view)"
            browser.wait_for(drawn, timeout=60, what="the fetch button and the chart, drawn")
            time.sleep(1.0)  # let the canvas settle before clicking on it
            label = browser.evaluate(f"{button}.label")
            # a real click on the button, drawn on the graph canvas (WORKFLOW_SCRIPT sets offset 0, scale 1)
            where = json.loads(browser.evaluate(
                f"JSON.stringify((() => {{ const n = {node}, w = {button}, app = window.comfyAPI.app.app;"
                " const r = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;"
                " return [r.left + (n.pos[0] + n.size[0] / 2 + ds.offset[0]) * ds.scale,"
                "         r.top + (n.pos[1] + w.y + 10 + ds.offset[1]) * ds.scale]; })())"))
            browser.click(*where)
            browser.wait_for(f"{button}.label !== {json.dumps(label)}", timeout=30, what="the click to start the fetch")
            choices = f"{node}.widgets.find((w) => w.name === 'coefficients').options.values"
            browser.wait_for(f"{json.dumps(FIXTURE_OUTPUTS)}.every((name) => {choices}.includes(name))", timeout=120,
                             what="the new files in the loader's list")
            finished = json.dumps("fetch the paper's coefficients (3 new files)")
            browser.wait_for(f"{button}.label === {finished}", timeout=30, what="the button to show the outcome")
            done = browser.evaluate(f"{button}.label")
            shot = browser.screenshot(tmp_path / "dyweight_fetch_button.png")
            errors = browser.errors()
    print(f"\n[test_browser] comfyui-frontend-package {version} ({which}): fetch button screenshot {shot}; "
          f"label {label!r} -> {done!r}")
    assert label == "fetch the paper's coefficients" and done == "fetch the paper's coefficients (3 new files)"
    assert len(site.requests) == 3
    ours = [e for e in errors if "dyweight" in e.lower() or "/extensions/" in e]
    assert ours == [], ours
