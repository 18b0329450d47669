import test from "node:test";
import assert from "node:assert/strict";
import {
  applyTrainingEvent, cleanEvent, eventIsFor, MAX_POINTS, newTrainingState, restoreTrainingState, trainingView,
} from "../lib/training_view.js";
import { fixture } from "./helpers.mjs";

const shared = fixture("training_events.json");

function fold(events) {
  const states = new Map();
  let clock = 1000;
  for (const event of events) {
    const key = String(event.node);
    const state = applyTrainingEvent(states.get(key) ?? null, event, clock++);
    states.delete(key); // keep "least recently updated first", as the server does
    states.set(key, state);
  }
  return states;
}

const withoutTimes = ({ started, updated, ...rest }) => rest;

test("folding matches the server (shared fixture with tests/test_routes.py)", () => {
  assert.equal(MAX_POINTS, shared.max_points);
  const states = fold(structuredClone(shared.events));
  assert.deepEqual([...states.keys()], shared.order);
  for (const [node, expected] of Object.entries(shared.expected)) {
    assert.deepEqual(withoutTimes(states.get(node)), expected, `node ${node}`);
  }
});

test("long runs keep a bounded, thinned history with the newest point", () => {
  let state = null;
  for (let i = 1; i <= 3000; i++) state = applyTrainingEvent(state, { node: "1", kind: "train", nfe: 5, iteration: i, loss: 1 / i }, i);
  const points = state.series["5"].train;
  assert.ok(points.length <= MAX_POINTS);
  assert.deepEqual(points[0], [1, 1]);
  assert.deepEqual(points[points.length - 1], [3000, 1 / 3000]);
  for (let i = 1; i < points.length; i++) assert.ok(points[i][0] > points[i - 1][0]);
});

test("events are cleaned: unknown kinds ignored, NaN and strings checked", () => {
  assert.equal(cleanEvent({ kind: "nope" }), null);
  assert.deepEqual(cleanEvent({ kind: "train", nfe: "5", iteration: 3.7, loss: NaN, extra: 1 }), { kind: "train", nfe: 5, iteration: 3, loss: null });
  const state = newTrainingState("4");
  assert.equal(applyTrainingEvent(state, { kind: "bogus" }, 1), state);
  assert.equal(state.status, null);
});

test("the view: teacher, training with ETA countdown, validation, done table, error", () => {
  let state = applyTrainingEvent(null, { node: "3", kind: "teacher", done: 4, total: 16, eta_s: 30 }, 1);
  let view = trainingView(state, { receivedAtMs: 10_000, nowMs: 20_000 });
  assert.equal(view.headline, "Teacher pairs 4 / 16");
  assert.equal(view.progress, 0.25);
  assert.equal(view.etaText, "20s");
  assert.equal(view.series, null);

  for (let i = 1; i <= 10; i++) {
    state = applyTrainingEvent(state, { node: "3", kind: "train", nfe: 5, iteration: i * 10, iterations: 200, loss: 1 / (i * i), eta_s: 190 - i * 10 }, 1 + i);
  }
  state = applyTrainingEvent(state, { node: "3", kind: "validation", nfe: 5, iteration: 100, val_rmse: 0.05, best: 0.05 }, 20);
  view = trainingView(state, { receivedAtMs: 0, nowMs: 30_000 });
  assert.equal(view.headline, "NFE 5 \u00b7 iteration 100 / 200");
  assert.equal(view.progress, 0.5);
  assert.equal(view.detail, "validating \u00b7 loss 0.01 \u00b7 best val 0.05 \u00b7 ETA 1m 00s");
  assert.equal(view.series.log, true);
  assert.equal(view.series.x.max, 200);
  assert.ok(view.series.y.min < 0.01 && view.series.y.max > 1);
  assert.deepEqual(view.series.yTicks, [0.01, 0.1, 1]);

  state = applyTrainingEvent(state, { node: "3", kind: "done", nfe: 5, table: [
    { solver: "ipndm", nfe: 5, rmse: 0.2, psnr: 22.5 }, { solver: "DyWeight", nfe: 5, rmse: 0.05, psnr: 30.1 },
    { solver: "euler", nfe: 5, rmse: 0.4 }] }, 30);
  view = trainingView(state, { receivedAtMs: 0, nowMs: 1e9 });
  assert.equal(view.headline, "Done \u00b7 NFE 5");
  assert.equal(view.etaText, "");
  assert.deepEqual(view.tableHeader, ["solver", "NFE", "RMSE", "PSNR"]);
  assert.deepEqual(view.table.map((r) => r.cells), [["ipndm", "5", "0.2", "22.5"], ["DyWeight", "5", "0.05", "30.1"], ["euler", "5", "0.4", ""]]);
  assert.deepEqual(view.table.map((r) => [r.best, r.dyweight]), [[false, false], [true, true], [false, false]]);

  state = applyTrainingEvent(state, { node: "3", kind: "error", message: "CUDA out of memory" }, 40);
  view = trainingView(state);
  assert.equal(view.headline, "Training failed");
  assert.equal(view.error, "CUDA out of memory");
});

test("no state yet: a waiting panel", () => {
  const view = trainingView(null);
  assert.equal(view.empty, true);
  assert.match(view.detail, /waiting/);
});

test("restore from the route keeps the ETA counting on this clock", () => {
  const entry = restoreTrainingState({ ...shared.expected["9"], started: 1, updated: 2, age_s: 12 }, 100_000);
  assert.equal(entry.receivedAtMs, 88_000);
  assert.equal(entry.state.node, "9");
  assert.equal("age_s" in entry.state, false);
  const view = trainingView(entry.state, { receivedAtMs: entry.receivedAtMs, nowMs: 100_000 });
  assert.equal(view.etaText, "48s");
  assert.equal(restoreTrainingState(null), null);
  assert.equal(restoreTrainingState({ error: "x" }), null);
});

test("messages match nodes, also inside subgraphs", () => {
  assert.ok(eventIsFor("12", 12));
  assert.ok(eventIsFor("4:12", 12));
  assert.ok(!eventIsFor("112", 12));
  assert.ok(!eventIsFor(null, 12));
});

test("log ticks: decades, with 2 and 5 in short ranges", async () => {
  const { logTicks } = await import("../lib/training_view.js");
  assert.deepEqual(logTicks(0.015, 0.7), [0.02, 0.05, 0.1, 0.2, 0.5]);
  assert.deepEqual(logTicks(0.0009, 2), [0.001, 0.01, 0.1, 1]);
});
