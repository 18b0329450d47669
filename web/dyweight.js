// ComfyUI-DyWeight front end: a Φ chart on "Load DyWeight Coefficients" and "KSampler (DyWeight)", a
// button on the former that fetches the paper's coefficients, and a live training panel on "Train DyWeight
// Coefficients". Everything is guarded: if the front end's API is missing or different, the nodes stay
// plain nodes and nothing is logged as an error.
//
// Data: GET /dyweight/coefficients/{name}, /dyweight/preset?nfe=N, /dyweight/training/{node},
// POST + GET /dyweight/fetch-official (nodes/routes.py), /object_info, the nodes' UI output
// {"dyweight_phi": [phi]} (onExecuted), and the server message "dyweight.training".

const EXTENSION = "DyWeight.Frontend";
const PHI_NODES = { DyWeightLoadCoefficients: "file", KSamplerDyWeight: "sampler" };
const TRAIN_NODE = "DyWeightTrain";
const PHI_WIDGET = "dyweight_phi_chart";
const TRAIN_WIDGET = "dyweight_training_chart";
const FETCH_WIDGET = "dyweight_fetch_official";
const FETCH_ROUTE = "/dyweight/fetch-official";
const FETCH_POLL_MS = 500;
const MIN_WIDTH = 380;
const MARGIN = 6;

let lib = null;
let app = null;
let api = null;

function note(message, error) {
  // A warning, never an error: the pack works without its front end.
  try { console.warn(`[DyWeight] ${message}`, error ?? ""); } catch (_) { /* no console */ }
}

try {
  const [appModule, apiModule, phiView, trainingView, phiChart, trainingChart, format, fetchView] = await Promise.all([
    import("../../scripts/app.js"), import("../../scripts/api.js"),
    import("./lib/phi_view.js"), import("./lib/training_view.js"),
    import("./lib/phi_chart.js"), import("./lib/training_chart.js"), import("./lib/format.js"), import("./lib/fetch_view.js"),
  ]);
  app = appModule.app;
  api = apiModule.api;
  lib = { ...phiView, ...trainingView, ...phiChart, ...trainingChart, ...format, ...fetchView };
} catch (error) {
  note("front end not available here; the DyWeight nodes work without their charts.", error);
}

// --- helpers ---------------------------------------------------------------------------------------

async function requestJson(route, method = "GET") {
  const init = { method, cache: "no-store" };
  const response = api && typeof api.fetchApi === "function" ? await api.fetchApi(route, init) : await fetch("/api" + route, init);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

const getJson = (route) => requestJson(route);

const encodeName = (name) => String(name).split("/").map(encodeURIComponent).join("/");

function findWidget(node, name) {
  return Array.isArray(node.widgets) ? node.widgets.find((w) => w && w.name === name) : undefined;
}

function chain(object, method, after) {
  const original = object[method];
  object[method] = function (...args) {
    const result = typeof original === "function" ? original.apply(this, args) : undefined;
    try { after.apply(this, args); } catch (error) { note(`${method} hook failed`, error); }
    return result;
  };
}

function linkOf(graph, id) {
  if (!graph || id === null || id === undefined) return null;
  const links = graph.links;
  if (!links) return null;
  if (typeof links.get === "function") return links.get(id) ?? null;
  return links[id] ?? null;
}

function redrawCanvas() {
  try { app?.graph?.setDirtyCanvas?.(true, true); } catch (_) { /* ignore */ }
}

/** Grow the node so a panel of ``height`` fits (never shrink what the user made larger). */
function fitNode(node) {
  try {
    const size = node.computeSize?.();
    if (!size) return;
    const width = Math.max(node.size?.[0] ?? 0, MIN_WIDTH);
    const height = Math.max(node.size?.[1] ?? 0, size[1]);
    if (width !== node.size?.[0] || height !== node.size?.[1]) node.setSize?.([width, height]);
  } catch (_) { /* ignore */ }
  redrawCanvas();
}

// --- a canvas panel inside a DOM widget ------------------------------------------------------------

class CanvasPanel {
  constructor(node, widgetName, className) {
    this.node = node;
    this.element = document.createElement("div");
    this.element.className = className;
    Object.assign(this.element.style, { width: "100%", boxSizing: "border-box", padding: "0", overflow: "hidden" });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, { display: "block", width: "100%" });
    this.element.appendChild(this.canvas);
    this.height = 80;
    this.width = MIN_WIDTH - 20;
    const panel = this;
    // The front end sizes the element to the widget's height less twice the margin.
    const outer = () => panel.height + 2 * MARGIN;
    this.widget = node.addDOMWidget(widgetName, "dyweight-chart", this.element, {
      serialize: false,
      hideOnZoom: false,
      margin: MARGIN,
      getMinHeight: outer,
      getMaxHeight: outer,
      getHeight: outer,
    });
    if (this.widget) this.widget.serialize = false;
    if (typeof ResizeObserver === "function") {
      this.observer = new ResizeObserver(() => this.draw());
      this.observer.observe(this.element);
    }
  }

  /** Draw on the next frame (many messages can arrive per frame during training). */
  scheduleDraw() {
    if (this.pending) return;
    this.pending = true;
    const frame = typeof globalThis.requestAnimationFrame === "function" ? globalThis.requestAnimationFrame : (f) => setTimeout(f, 0);
    frame(() => { this.pending = false; this.draw(); });
  }

  layout() { return { height: 80 }; }

  render() { /* subclasses */ }

  draw() {
    try {
      const width = Math.max(160, Math.round(this.element.clientWidth || this.width));
      this.width = width;
      const height = Math.max(40, Math.ceil(this.layout(width).height));
      const resized = height !== this.height;
      this.height = height;
      const ratio = Math.max(1, Math.min(3, globalThis.devicePixelRatio || 1));
      this.canvas.width = Math.round(width * ratio);
      this.canvas.height = Math.round(height * ratio);
      this.canvas.style.height = `${height}px`;
      const ctx = this.canvas.getContext("2d");
      if (!ctx) return;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      this.render(ctx, width);
      if (resized) fitNode(this.node);
    } catch (error) {
      note("drawing failed", error);
    }
  }

  remove() {
    try { this.observer?.disconnect(); } catch (_) { /* ignore */ }
  }
}

class PhiPanel extends CanvasPanel {
  constructor(node, role) {
    super(node, PHI_WIDGET, "dyweight-phi-chart");
    this.role = role;
    this.view = null;
    this.message = "loading\u2026";
    this.mode = lib.MODES.WEIGHTS;
    this.hover = null;
    this.layoutCache = null;
    this.request = 0;
    this.canvas.addEventListener("pointermove", (event) => this.onPointer(event));
    this.canvas.addEventListener("pointerleave", () => { this.hover = null; this.canvas.title = ""; this.draw(); });
    this.canvas.addEventListener("pointerdown", (event) => {
      const hit = this.hitAt(event);
      if (hit && (hit.toggle || hit.cell)) {
        this.mode = this.mode === lib.MODES.DELTA ? lib.MODES.WEIGHTS : lib.MODES.DELTA;
        this.draw();
        event.stopPropagation();
      }
    });
  }

  layout(width) { return lib.phiLayout(this.view, width); }

  render(ctx, width) {
    this.layoutCache = lib.drawPhi(ctx, this.view, width, { mode: this.mode, hover: this.hover, message: this.message });
  }

  hitAt(event) {
    if (!this.view || !this.view.ok || !this.layoutCache) return null;
    const rect = this.canvas.getBoundingClientRect();
    const scale = rect.width ? this.width / rect.width : 1; // the canvas is CSS-scaled with the graph zoom
    return lib.phiHit(this.view, this.layoutCache, (event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale);
  }

  onPointer(event) {
    const hit = this.hitAt(event);
    const text = !hit ? "" : hit.toggle ? "Switch between the weights and their difference to Adams\u2013Bashforth"
      : hit.cell ? lib.cellTooltip(this.view, hit.cell) + "\n(click: weights \u2194 \u0394 vs AB)"
        : lib.stepTooltip(this.view, hit.step);
    if (this.canvas.title !== text) this.canvas.title = text;
    const same = (a, b) => (a?.cell === b?.cell && a?.step === b?.step);
    if (!same(hit, this.hover)) { this.hover = hit; this.draw(); }
  }

  show(phi, origin) {
    const view = lib.phiView(phi, { origin });
    this.view = view.ok ? view : null;
    this.message = view.ok ? "" : view.error;
    this.draw();
  }

  showMessage(message) {
    this.view = null;
    this.message = message;
    this.draw();
  }

  /** Fetch what the node would use now (file, preset, or the linked loader's file). */
  async refresh() {
    const ticket = ++this.request;
    const node = this.node;
    let route = null;
    let origin = "";
    try {
      if (this.role === "file") {
        const name = findWidget(node, "coefficients")?.value;
        if (!name) { this.showMessage("no coefficient file selected"); return; }
        route = `/dyweight/coefficients/${encodeName(name)}`;
        origin = "file";
      } else {
        const source = this.linkedSource();
        if (source === "unknown") {
          this.showMessage("coefficients come from the connected node: the chart shows them after the next run");
          return;
        }
        if (source) {
          route = `/dyweight/coefficients/${encodeName(source)}`;
          origin = "connected";
        } else {
          const steps = findWidget(node, "steps")?.value;
          if (steps === undefined || steps === null || steps === "") return;
          route = `/dyweight/preset?nfe=${encodeURIComponent(String(steps))}`;
          origin = "preset before run";
        }
      }
      if (!this.view) this.showMessage("loading\u2026");
      const phi = await getJson(route);
      if (ticket === this.request) this.show(phi, origin);
    } catch (error) {
      if (ticket === this.request) this.showMessage(`cannot show these coefficients: ${error.message || error}`);
    }
  }

  /** For KSampler (DyWeight): null (no link), a coefficient name (a loader upstream), or "unknown". */
  linkedSource() {
    const node = this.node;
    const input = Array.isArray(node.inputs) ? node.inputs.find((i) => i && i.name === "coefficients") : null;
    if (!input || input.link === null || input.link === undefined) return null;
    const graph = node.graph;
    const link = linkOf(graph, input.link);
    const origin = link ? graph.getNodeById?.(link.origin_id) : null;
    if (origin && (origin.comfyClass === "DyWeightLoadCoefficients" || origin.type === "DyWeightLoadCoefficients")) {
      return findWidget(origin, "coefficients")?.value || "unknown";
    }
    return "unknown";
  }
}

// Training states live here by node id, so panels created later (tab switch, reload) pick them up.
const trainingStates = new Map();
const trainingPanels = new Set();

class TrainingPanel extends CanvasPanel {
  constructor(node) {
    super(node, TRAIN_WIDGET, "dyweight-training-chart");
    this.entry = null;
    this.timer = setInterval(() => {
      if (!this.node.graph && this.entry) return;
      if (this.entry && ["teacher", "train", "validation"].includes(this.entry.state.status)) this.draw();
    }, 1000);
    trainingPanels.add(this);
  }

  view() {
    return lib.trainingView(this.entry?.state ?? null, { receivedAtMs: this.entry?.receivedAtMs, nowMs: Date.now() });
  }

  layout(width) { return lib.trainingLayout(this.view(), width); }

  render(ctx, width) { lib.drawTraining(ctx, this.view(), width); }

  matches(eventNode) { return lib.eventIsFor(eventNode, this.node.id); }

  update(entry) { this.entry = entry; this.scheduleDraw(); }

  async restore() {
    const id = this.node.id;
    if (id === null || id === undefined || id === -1) return;
    for (const [key, entry] of trainingStates) {
      if (this.matches(key)) { this.update(entry); return; }
    }
    try {
      // the list (always 200) rather than /dyweight/training/{node}: a 404 would show up as a console error
      const { jobs } = await getJson("/dyweight/training");
      const found = (Array.isArray(jobs) ? jobs : []).filter((job) => job && this.matches(job.node)).pop();
      const entry = found ? lib.restoreTrainingState(found) : null;
      if (entry) { trainingStates.set(entry.state.node, entry); this.update(entry); } else this.draw();
    } catch (error) {
      note("could not restore the training state", error);
      this.draw();
    }
  }

  remove() {
    super.remove();
    clearInterval(this.timer);
    trainingPanels.delete(this);
  }
}

function onTrainingMessage(event) {
  const data = event?.detail ?? event;
  if (!data || data.node === undefined) return;
  const key = String(data.node);
  const previous = trainingStates.get(key);
  const state = lib.applyTrainingEvent(previous ? previous.state : null, data, Date.now() / 1000);
  const entry = { state, receivedAtMs: Date.now() };
  trainingStates.set(key, entry);
  for (const panel of trainingPanels) {
    if (panel.matches(key)) panel.update(entry);
  }
}

// --- the "fetch the paper's coefficients" button ------------------------------------------------------

let fetching = null; // the page's one fetch (any loader's button shows it)

function graphNodes() {
  const nodes = app?.graph?._nodes ?? app?.graph?.nodes;
  return Array.isArray(nodes) ? nodes : [];
}

/** Put the server's current list of coefficient files into every loader's combo (no page reload). */
async function refreshCoefficientChoices(pressed) {
  const values = lib.coefficientChoices(await getJson("/object_info/DyWeightLoadCoefficients"));
  if (!values) return;
  const loaders = new Set([pressed, ...graphNodes().filter((n) => n?.comfyClass === "DyWeightLoadCoefficients" || n?.type === "DyWeightLoadCoefficients")]);
  for (const node of loaders) {
    const combo = findWidget(node, "coefficients");
    if (combo) combo.options = { ...(combo.options ?? {}), values };
  }
}

function showFetchError(node, state) {
  const text = lib.fetchErrorText(state);
  note(`fetching the paper's coefficients failed:\n${text}`);
  node.dyweightPanel?.showMessage(`fetching the paper's coefficients failed: ${state?.error ?? "see the browser console"}`);
  try {
    app?.extensionManager?.toast?.add?.({ severity: "error", summary: "DyWeight: fetch failed", detail: text });
  } catch (_) { /* no toasts in this front end */ }
}

/** POST the fetch (or join the running one), show its progress on the button, then refresh the lists. */
function fetchOfficial(node) {
  if (fetching) return fetching;
  const show = (state) => {
    // looked up each time: a front end may replace the widget object addWidget returned by its own copy
    const button = findWidget(node, FETCH_WIDGET);
    if (button) button.label = lib.fetchLabel(state);
    redrawCanvas();
  };
  fetching = (async () => {
    try {
      try {
        show(await requestJson(FETCH_ROUTE, "POST"));
      } catch (error) {
        if (error.status !== 409) throw error; // 409: a fetch is running already: follow it
      }
      let state;
      do {
        await new Promise((resolve) => setTimeout(resolve, FETCH_POLL_MS));
        state = await getJson(FETCH_ROUTE);
        show(state);
      } while (lib.fetchRunning(state));
      if (state.status === "done") await refreshCoefficientChoices(node);
      else showFetchError(node, state);
    } catch (error) {
      show({ status: "error" });
      showFetchError(node, { error: error.message || String(error) });
    } finally {
      fetching = null;
    }
  })();
  return fetching;
}

function addFetchButton(node) {
  if (typeof node.addWidget !== "function") return;
  // LiteGraph calls a button's callback with (value, canvas, node, …); the node it was clicked on is used, as
  // a front end may have moved the widget to another node object than the one it was created for.
  const press = (value, canvas, clicked) => { fetchOfficial(clicked?.widgets ? clicked : node); };
  const button = node.addWidget("button", FETCH_WIDGET, null, press, { serialize: false });
  if (!button) return;
  button.label = lib.FETCH_LABEL;
  button.serialize = false;
}

// --- wiring ----------------------------------------------------------------------------------------

function canAddPanels(nodeType) {
  return typeof nodeType?.prototype?.addDOMWidget === "function" || typeof globalThis.LGraphNode?.prototype?.addDOMWidget === "function";
}

function setupPhiNode(nodeType, role) {
  const proto = nodeType.prototype;
  chain(proto, "onNodeCreated", function () {
    if (typeof this.addDOMWidget !== "function") return;
    if (role === "file") addFetchButton(this);
    const panel = new PhiPanel(this, role);
    this.dyweightPanel = panel;
    const watch = role === "file" ? ["coefficients"] : ["steps"];
    for (const name of watch) {
      const widget = findWidget(this, name);
      if (widget) chain(widget, "callback", () => { panel.refresh(); notifyLinked(this); });
    }
    if (!this.size || this.size[0] < MIN_WIDTH) this.setSize?.([MIN_WIDTH, this.size?.[1] ?? 200]);
    setTimeout(() => panel.refresh(), 0);
  });
  chain(proto, "onConfigure", function () {
    const panel = this.dyweightPanel;
    if (panel) setTimeout(() => panel.refresh(), 0);
  });
  chain(proto, "onExecuted", function (message) {
    const phi = message?.dyweight_phi?.[0];
    if (phi && this.dyweightPanel) this.dyweightPanel.show(phi, "last run");
  });
  chain(proto, "onRemoved", function () { this.dyweightPanel?.remove(); });
  if (role === "sampler") {
    chain(proto, "onConnectionsChange", function () {
      const panel = this.dyweightPanel;
      if (panel) setTimeout(() => panel.refresh(), 0);
    });
  }
}

/** A loader's selection changed: KSampler (DyWeight) nodes it feeds refresh too. */
function notifyLinked(node) {
  try {
    for (const output of node.outputs ?? []) {
      for (const id of output.links ?? []) {
        const link = linkOf(node.graph, id);
        const target = link ? node.graph.getNodeById?.(link.target_id) : null;
        if (target?.dyweightPanel && target.dyweightPanel.role === "sampler") target.dyweightPanel.refresh();
      }
    }
  } catch (_) { /* ignore */ }
}

function setupTrainNode(nodeType) {
  const proto = nodeType.prototype;
  chain(proto, "onNodeCreated", function () {
    if (typeof this.addDOMWidget !== "function") return;
    const panel = new TrainingPanel(this);
    this.dyweightTraining = panel;
    if (!this.size || this.size[0] < MIN_WIDTH) this.setSize?.([MIN_WIDTH, this.size?.[1] ?? 200]);
    setTimeout(() => panel.restore(), 0);
  });
  chain(proto, "onConfigure", function () {
    const panel = this.dyweightTraining;
    if (panel) setTimeout(() => panel.restore(), 0);
  });
  chain(proto, "onRemoved", function () { this.dyweightTraining?.remove(); });
}

if (app && lib && typeof app.registerExtension === "function") {
  try {
    app.registerExtension({
      name: EXTENSION,
      async setup() {
        if (api && typeof api.addEventListener === "function") {
          api.addEventListener("dyweight.training", onTrainingMessage);
          api.addEventListener("reconnected", () => { for (const panel of trainingPanels) panel.restore(); });
        }
      },
      async beforeRegisterNodeDef(nodeType, nodeData) {
        try {
          const name = nodeData?.name;
          if (!canAddPanels(nodeType)) return;
          if (PHI_NODES[name]) setupPhiNode(nodeType, PHI_NODES[name]);
          else if (name === TRAIN_NODE) setupTrainNode(nodeType);
        } catch (error) {
          note(`could not add the chart to ${nodeData?.name}`, error);
        }
      },
    });
  } catch (error) {
    note("registerExtension failed", error);
  }
}

// For the browser test and for debugging from the console.
export const dyweightFrontend = { trainingStates, trainingPanels, onTrainingMessage, PhiPanel, TrainingPanel, fetchOfficial };
