// The extension entry (web/dyweight.js) against stand-ins for the front end's app/api modules and the DOM:
// it is copied to <tmp>/extensions/dyweight/ beside a <tmp>/scripts/{app,api}.js that hand out fakes.
import test from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { fixture, recordingContext } from "./helpers.mjs";

const WEB = join(dirname(fileURLToPath(import.meta.url)), "..");

function copyExtension(withHost) {
  const root = mkdtempSync(join(tmpdir(), "dyweight-ext-"));
  const target = join(root, "extensions", "dyweight");
  mkdirSync(target, { recursive: true });
  cpSync(join(WEB, "dyweight.js"), join(target, "dyweight.js"));
  cpSync(join(WEB, "lib"), join(target, "lib"), { recursive: true });
  if (withHost) {
    mkdirSync(join(root, "scripts"));
    writeFileSync(join(root, "scripts", "app.js"), "export const app = globalThis.__fakeComfy.app;\n");
    writeFileSync(join(root, "scripts", "api.js"), "export const api = globalThis.__fakeComfy.api;\n");
  }
  return pathToFileURL(join(target, "dyweight.js")).href;
}

function captureConsole() {
  const seen = { warn: [], error: [] };
  const saved = { warn: console.warn, error: console.error };
  console.warn = (...args) => seen.warn.push(args.join(" "));
  console.error = (...args) => seen.error.push(args.join(" "));
  return { seen, restore: () => Object.assign(console, saved) };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

test("without a ComfyUI front end the module loads quietly (no error, nothing registered)", async () => {
  const { seen, restore } = captureConsole();
  try {
    const module = await import(copyExtension(false));
    assert.ok(module.dyweightFrontend);
  } finally {
    restore();
  }
  assert.deepEqual(seen.error, []);
  assert.equal(seen.warn.length, 1);
  assert.match(seen.warn[0], /work without their charts/);
});

function fakeDom() {
  globalThis.document = {
    createElement(tag) {
      const element = {
        tag, style: {}, children: [], clientWidth: 400, title: "", listeners: {},
        appendChild(child) { this.children.push(child); },
        addEventListener(name, fn) { this.listeners[name] = fn; },
        getBoundingClientRect: () => ({ left: 0, top: 0, width: 400, height: 300 }),
      };
      if (tag === "canvas") {
        element.context = recordingContext();
        element.getContext = () => element.context;
      }
      return element;
    },
  };
}

function fakeHost(routes) {
  const fetched = [];
  const listeners = {};
  const app = {
    extensions: [],
    registerExtension(extension) { this.extensions.push(extension); },
    graph: { setDirtyCanvas() {} },
  };
  const api = {
    async fetchApi(route, init) {
      fetched.push(init?.method && init.method !== "GET" ? `${init.method} ${route}` : route);
      const [status, body] = routes(route, init);
      return { ok: status >= 200 && status < 300, status, json: async () => body };
    },
    addEventListener(name, fn) { listeners[name] = fn; },
  };
  globalThis.__fakeComfy = { app, api };
  return { app, api, fetched, listeners };
}

/** Run ``body(host)`` with the fake DOM and front end; afterwards nothing may have been logged. */
async function withFrontEnd(routes, body) {
  fakeDom();
  const host = fakeHost(routes);
  const { seen, restore } = captureConsole();
  try {
    await body(host);
  } finally {
    restore();
    delete globalThis.document;
    delete globalThis.__fakeComfy;
  }
  assert.deepEqual(seen.error, []);
  assert.deepEqual(seen.warn, []);
}

function nodeClass(widgets) {
  return class FakeNode {
    constructor() {
      this.id = 7;
      this.size = [300, 120];
      this.widgets = widgets.map((w) => ({ ...w }));
      this.inputs = [{ name: "coefficients", link: null }];
      this.outputs = [];
      this.graph = { links: {}, getNodeById: () => null };
    }
    addDOMWidget(name, type, element, options) {
      const widget = { name, type, element, options };
      this.widgets.push(widget);
      return widget;
    }
    computeSize() { return [300, 120 + (this.widgets.at(-1).options?.getMinHeight?.() ?? 0)]; }
    setSize(size) { this.size = size; }
  };
}

test("with the front end: charts on the three nodes, fed by the routes, onExecuted and messages", async () => {
  const ab = fixture("phi_ab_nfe5.json");
  const trained = fixture("phi_trained.json");
  await withFrontEnd((route) => {
    if (route === "/dyweight/coefficients/shipped/adams_bashforth/ab-nfe5.safetensors") return [200, ab];
    if (route.startsWith("/dyweight/preset?nfe=5")) return [200, ab];
    if (route === "/dyweight/coefficients/my%20files/broken%23.safetensors") return [422, { error: "truncated download?" }];
    if (route === "/dyweight/training") {
      return [200, { jobs: [{ node: "17", status: "done" }, { node: "7", status: "train", nfe: 5, iteration: 5, iterations: 10, loss: 0.2,
        eta_s: 10, series: { 5: { train: [[5, 0.2]], val: [], best: null } }, table: [], age_s: 1 }] }];
    }
    return [404, { error: "nope" }];
  }, async (host) => {
    await import(copyExtension(true));
    assert.equal(host.app.extensions.length, 1);
    const extension = host.app.extensions[0];
    assert.equal(extension.name, "DyWeight.Frontend");
    await extension.setup();
    assert.equal(typeof host.listeners["dyweight.training"], "function");

    // Load DyWeight Coefficients
    const Loader = nodeClass([{ name: "coefficients", value: "shipped/adams_bashforth/ab-nfe5.safetensors" }]);
    await extension.beforeRegisterNodeDef(Loader, { name: "DyWeightLoadCoefficients" });
    const loader = new Loader();
    loader.onNodeCreated();
    await tick();
    assert.deepEqual(host.fetched, ["/dyweight/coefficients/shipped/adams_bashforth/ab-nfe5.safetensors"]);
    const panel = loader.dyweightPanel;
    assert.equal(panel.view.ok, true);
    assert.equal(panel.view.origin, "file");
    assert.equal(panel.widget.serialize, false);
    assert.ok(loader.size[0] >= 380 && loader.size[1] >= panel.height);
    assert.ok(panel.canvas.context.calls.some((c) => c.op === "fillText" && c.args[0] === "\u03a3w time shift"));

    const combo = loader.widgets.find((w) => w.name === "coefficients");
    combo.value = "my files/broken#.safetensors";
    combo.callback(combo.value);
    await tick();
    assert.equal(host.fetched.at(-1), "/dyweight/coefficients/my%20files/broken%23.safetensors");
    assert.equal(panel.view, null);
    assert.match(panel.message, /truncated download/);

    loader.onExecuted({ dyweight_phi: [trained], text: ["..."] });
    assert.equal(panel.view.origin, "last run");
    assert.equal(panel.view.trained, true);
    loader.onExecuted({ images: [] }); // other UI output leaves the chart alone
    assert.equal(panel.view.trained, true);

    // KSampler (DyWeight): the preset for the selected NFE
    const Sampler = nodeClass([{ name: "steps", value: "5" }]);
    await extension.beforeRegisterNodeDef(Sampler, { name: "KSamplerDyWeight" });
    const sampler = new Sampler();
    sampler.onNodeCreated();
    await tick();
    assert.equal(host.fetched.at(-1), "/dyweight/preset?nfe=5");
    assert.equal(sampler.dyweightPanel.view.origin, "preset before run");
    sampler.inputs[0].link = 3; // connected to something that is not a loader
    sampler.onConnectionsChange();
    await tick();
    assert.match(sampler.dyweightPanel.message, /after the next run/);

    // Train DyWeight Coefficients: restore from the route, then live messages
    const Trainer = nodeClass([]);
    await extension.beforeRegisterNodeDef(Trainer, { name: "DyWeightTrain" });
    const trainer = new Trainer();
    trainer.onNodeCreated();
    await tick();
    const training = trainer.dyweightTraining;
    assert.equal(training.entry.state.iteration, 5);
    host.listeners["dyweight.training"]({ detail: { node: "7", kind: "train", nfe: 5, iteration: 6, iterations: 10, loss: 0.15, eta_s: 8 } });
    host.listeners["dyweight.training"]({ detail: { node: "8", kind: "train", nfe: 5, iteration: 99, iterations: 100, loss: 0.1 } });
    assert.equal(training.entry.state.iteration, 6);
    assert.deepEqual(training.entry.state.series["5"].train, [[5, 0.2], [6, 0.15]]);
    host.listeners["dyweight.training"]({ detail: { node: "7", kind: "done", nfe: 5, table: [{ solver: "dyweight", nfe: 5, rmse: 0.1 }] } });
    await tick();
    assert.equal(training.view().headline, "Done \u00b7 NFE 5");
    assert.ok(training.canvas.context.calls.some((c) => c.op === "fillText" && c.args[0] === "solver"));
    trainer.onRemoved();

    // other nodes are left alone
    const Other = nodeClass([]);
    const before = Other.prototype.onNodeCreated;
    await extension.beforeRegisterNodeDef(Other, { name: "KSampler" });
    assert.equal(Other.prototype.onNodeCreated, before);
    // a front end without addDOMWidget: plain nodes
    class Bare {}
    await extension.beforeRegisterNodeDef(Bare, { name: "DyWeightLoadCoefficients" });
    assert.equal(Bare.prototype.onNodeCreated, undefined);
  });
});

test("the loader's fetch button posts, shows the progress and refreshes the loaders' lists", async () => {
  const ab = fixture("phi_ab_nfe5.json");
  const states = [
    { status: "running", phase: "download", file: "exps/00036-mscoco-nfe8/network-snapshot-000005.pkl", index: 0, count: 7, done: 7800, total: 15599 },
    { status: "done", written: ["dyweight-00036-mscoco-nfe8.safetensors"], present: [] },
  ];
  const labels = [];
  await withFrontEnd((route, init) => {
    if (route === "/dyweight/fetch-official" && init?.method === "POST") return [202, { status: "running", phase: "check" }];
    if (route === "/dyweight/fetch-official") return [200, states.shift()];
    if (route === "/object_info/DyWeightLoadCoefficients") {
      return [200, { DyWeightLoadCoefficients: { input: { required: { coefficients: [["dyweight-00036-mscoco-nfe8.safetensors", "shipped/adams_bashforth/ab-nfe5.safetensors"]] } } } }];
    }
    if (route.startsWith("/dyweight/coefficients/")) return [200, ab];
    return [404, { error: "nope" }];
  }, async (host) => {
    const { dyweightFrontend } = await import(copyExtension(true));
    const extension = host.app.extensions.at(-1);
    const Loader = nodeClass([{ name: "coefficients", value: "shipped/adams_bashforth/ab-nfe5.safetensors", options: { values: ["shipped/adams_bashforth/ab-nfe5.safetensors"] } }]);
    Loader.prototype.addWidget = function (type, name, value, callback, options) {
      const widget = { type, name, value, callback, options };
      this.widgets.push(widget);
      return widget;
    };
    // Newer front ends keep their own copy of a widget, not the object addWidget returned: labels must be
    // set on the node's widget.
    const frontEndCopies = (node) => {
      node.widgets = node.widgets.map((w) => {
        if (w.type !== "button") return w;
        const copy = { ...w, _label: w.label };
        delete copy.label;
        Object.defineProperty(copy, "label", { get() { return this._label; }, set(text) { this._label = text; labels.push(text); } });
        return copy;
      });
    };
    await extension.beforeRegisterNodeDef(Loader, { name: "DyWeightLoadCoefficients" });
    const loader = new Loader();
    const other = new Loader();
    host.app.graph._nodes = [Object.assign(loader, { comfyClass: "DyWeightLoadCoefficients" }), Object.assign(other, { comfyClass: "DyWeightLoadCoefficients" })];
    loader.onNodeCreated();
    other.onNodeCreated();
    frontEndCopies(loader);
    frontEndCopies(other);
    await tick();
    const button = loader.widgets.find((w) => w.type === "button");
    assert.equal(button.label, "fetch the paper's coefficients");
    assert.equal(button.serialize, false);
    assert.equal(button.options.serialize, false);
    assert.ok(loader.widgets.indexOf(button) < loader.widgets.indexOf(loader.dyweightPanel.widget)); // above the chart

    button.callback(button.value, {}, loader); // as LiteGraph calls it: (value, canvas, node, …)
    await dyweightFrontend.fetchOfficial(loader); // the press's fetch, still running: the same promise
    assert.deepEqual(host.fetched.filter((r) => r.includes("fetch-official") || r.includes("object_info")), [
      "POST /dyweight/fetch-official", "/dyweight/fetch-official", "/dyweight/fetch-official", "/object_info/DyWeightLoadCoefficients"]);
    assert.deepEqual(labels, ["checking\u2026", "downloading 1/7 \u00b7 50%", "fetch the paper's coefficients (1 new file)"]);
    for (const node of [loader, other]) {
      assert.deepEqual(node.widgets.find((w) => w.name === "coefficients").options.values,
        ["dyweight-00036-mscoco-nfe8.safetensors", "shipped/adams_bashforth/ab-nfe5.safetensors"]);
    }
  });
});
