import test from "node:test";
import assert from "node:assert/strict";
import { cellColor, cellStyle, cellTooltip, MODES, phiProblem, phiView, stepTooltip } from "../lib/phi_view.js";
import { fixture } from "./helpers.mjs";

const ab = fixture("phi_ab_nfe5.json");
const trained = fixture("phi_trained.json");

test("an Adams-Bashforth preset is recognised as the reference", () => {
  const view = phiView(ab, { origin: "preset" });
  assert.equal(view.ok, true);
  assert.equal(view.steps, 5);
  assert.equal(view.order, 4);
  assert.equal(view.isReference, true);
  assert.equal(view.trained, false);
  assert.equal(view.title, "ab-nfe5.safetensors");
  assert.equal(view.cells.length, 20);
  view.sums.forEach((s) => assert.ok(Math.abs(s - 1) < 1e-6)); // float32 rows of Adams-Bashforth sum to 1
  assert.deepEqual(view.stepLabels, ["0", "1", "2", "3", "4"]);
  assert.ok(view.facts[0].startsWith("NFE 5 \u00b7 5 steps \u00b7 K=4"));
  assert.match(view.facts[1], /^any model \u00b7 any prediction \u00b7 karras/);
  assert.match(view.facts[2], /^untrained: adams_bashforth K=4 \(= reference\)/);
  // cells above the diagonal have no gradient yet
  const unavailable = view.cells.filter((c) => !c.available).map((c) => [c.n, c.k]);
  assert.deepEqual(unavailable, [[0, 1], [0, 2], [1, 2], [0, 3], [1, 3], [2, 3]]);
  assert.ok(view.lineRange.min < 1 && view.lineRange.max > 1);
});

test("a trained phi: facts, deltas to the reference, sums and scales", () => {
  const view = phiView(trained, { origin: "file" });
  assert.equal(view.isReference, false);
  assert.equal(view.trained, true);
  assert.equal(view.afs, true);
  assert.equal(view.nfe, 5);
  assert.equal(view.steps, 6);
  assert.equal(view.stepLabels[0], "AFS");
  assert.equal(view.facts[0], "NFE 5 \u00b7 6 steps (AFS) \u00b7 K=3 \u00b7 \u00f7 \u03c3");
  assert.equal(view.facts[1], "SD15 \u00b7 eps \u00b7 EDM \u03c1=7 \u00b7 CFG 7.5 \u00b7 \u03c3 0.0292\u201314.6");
  assert.equal(view.facts[2], "trained 800 it \u00b7 teacher dpmpp_2m\u00d740 \u00b7 64 pairs \u00b7 loss 0.00213");
  assert.equal(view.facts[3], "val RMSE 0.0123 \u00b7 PSNR 31.4 dB \u00b7 for sd-v1-5-pruned-emaonly.safetensors");
  const cell = view.cells.find((c) => c.n === 2 && c.k === 1);
  assert.ok(Math.abs(cell.value - trained.weights[2][1]) < 1e-12);
  assert.ok(Math.abs(cell.delta - (trained.weights[2][1] - trained.reference_weights[2][1])) < 1e-12);
  assert.equal(cell.text, "\u22121.44");
  view.sums.forEach((s, n) => assert.ok(Math.abs(s - trained.weight_sums[n]) < 1e-9));
  assert.deepEqual(view.scales, trained.time_scale);
  const used = view.scales.slice(1); // s_0 is unused with AFS
  const lo = Math.min(...view.sums, ...used);
  const hi = Math.max(...view.sums, ...used);
  assert.ok(view.lineRange.min < lo && view.lineRange.max > hi);
  assert.ok(view.maxAbsDelta > 0 && view.maxAbsDelta < 0.2);
});

test("cell colours: symmetric diverging scale, readable text", () => {
  const zero = cellColor(0, 2);
  const pos = cellColor(2, 2);
  const neg = cellColor(-2, 2);
  assert.notEqual(pos.fill, neg.fill);
  assert.equal(zero.text, "#e8eaed");
  assert.equal(pos.text, "#15171a"); // saturated amber is light: dark text
  assert.match(cellColor(null, 1).fill, /^rgb/);
  const view = phiView(trained);
  const cell = view.cells.find((c) => c.n === 3 && c.k === 0);
  assert.equal(cellStyle(view, cell, MODES.DELTA).label, cell.deltaText);
  assert.equal(cellStyle(view, cell, MODES.WEIGHTS).label, cell.text);
  assert.equal(cellStyle(view, view.cells.find((c) => !c.available)).label, "");
});

test("tooltips name the step, the slot and the reference", () => {
  const view = phiView(trained);
  const text = cellTooltip(view, view.cells.find((c) => c.n === 2 && c.k === 1));
  assert.match(text, /^step 2, gradient 1 step back: w = /);
  assert.match(text, /Adams\u2013Bashforth \(iPNDM, order 3\): 1.333|Adams\u2013Bashforth \(iPNDM, order 3\): \u22121.333/);
  assert.match(cellTooltip(view, view.cells.find((c) => c.n === 0 && c.k === 2)), /no gradient yet/);
  assert.match(stepTooltip(view, 0), /^step AFS: \u03a3w = 1.047 \(time shift\), s unused \(analytical first step\)/);
  assert.match(stepTooltip(view, 1), /^step 1: \u03a3w = 1.046 \(time shift\), s = 1.008\nAdams\u2013Bashforth \(iPNDM, order 3\): \u03a3w = 1, s = 1$/);
});

test("bad input gives a message, never an exception", () => {
  for (const bad of [null, {}, { weights: [] }, { weights: [[1], [1, 2]] }, { weights: [[1]], time_scale: [1, 2] }, "x"]) {
    const view = phiView(bad);
    assert.equal(view.ok, false);
    assert.equal(typeof view.error, "string");
    assert.equal(phiProblem(bad), view.error);
  }
  const noReference = phiView({ ...trained, reference_weights: null, training: null, schedule: null });
  assert.equal(noReference.ok, true);
  assert.equal(noReference.hasReference, false);
  assert.equal(noReference.isReference, false);
  const withNull = phiView({ ...trained, weights: trained.weights.map((r, n) => (n === 1 ? [null, ...r.slice(1)] : r)) });
  assert.equal(withNull.ok, true);
  assert.equal(withNull.cells.find((c) => c.n === 1 && c.k === 0).text, "\u2013");
});

test("a DSS searched solver: full history, rows summing to one, its source", () => {
  const view = phiView(fixture("phi_dss_ddpm_nfe6.json"), { origin: "preset" });
  assert.equal(view.ok, true);
  assert.equal(view.steps, 6);
  assert.equal(view.order, 6);
  assert.equal(view.cells.length, 36);
  assert.equal(view.trained, false);
  view.sums.forEach((s) => assert.ok(Math.abs(s - 1) < 1e-9));
  assert.equal(view.facts[0], "DSS \u00b7 NFE 6 \u00b7 6 steps \u00b7 K=6 \u00b7 \u00f7 \u03c3 \u00b7 combines x\u2080");
  assert.equal(view.facts[1], "any model \u00b7 eps \u00b7 DDPM t \u2192 model \u03c3(t)");
  assert.equal(view.facts[2], "searched on DiT-XL/2, ImageNet 256\u00b2");
  assert.equal(view.facts[3], "from MCG-NJU/NeuralSolver@7188794 (MIT)");
});
