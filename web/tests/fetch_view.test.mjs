import test from "node:test";
import assert from "node:assert/strict";
import { FETCH_LABEL, coefficientChoices, fetchErrorText, fetchLabel, fetchRunning } from "../lib/fetch_view.js";

test("the button's label follows the fetch state", () => {
  assert.equal(fetchLabel(null), FETCH_LABEL);
  assert.equal(fetchLabel({ status: "idle" }), FETCH_LABEL);
  assert.equal(fetchLabel({ status: "running", phase: "check" }), "checking\u2026");
  assert.equal(fetchLabel({ status: "running", phase: "download", index: 2, count: 7, done: 999, total: 1000 }),
    "downloading 3/7 \u00b7 99%");
  assert.equal(fetchLabel({ status: "running", phase: "download", index: 0, count: 1, done: 5, total: 0 }),
    "downloading 1/1 \u00b7 0%");
  assert.equal(fetchLabel({ status: "running", phase: "convert" }), "converting\u2026");
  assert.equal(fetchLabel({ status: "done", written: ["a", "b"], present: [] }), `${FETCH_LABEL} (2 new files)`);
  assert.equal(fetchLabel({ status: "done", written: [], present: ["a", "b", "c"] }), `${FETCH_LABEL} (all 3 present)`);
  assert.equal(fetchLabel({ status: "error", error: "HTTP 503" }), `${FETCH_LABEL} (failed: retry)`);
  assert.equal(fetchRunning({ status: "running" }), true);
  assert.equal(fetchRunning({ status: "done" }), false);
  assert.equal(fetchRunning(null), false);
});

test("error text and the loader's choices", () => {
  assert.equal(fetchErrorText({ error: "offline", manual: "To install them by hand: …" }), "offline\n\nTo install them by hand: …");
  assert.equal(fetchErrorText({ error: "offline", manual: "" }), "offline");
  assert.equal(fetchErrorText(null), "the fetch failed");
  const info = { DyWeightLoadCoefficients: { input: { required: { coefficients: [["a.safetensors", "shipped/b.safetensors"], {}] } } } };
  assert.deepEqual(coefficientChoices(info), ["a.safetensors", "shipped/b.safetensors"]);
  assert.equal(coefficientChoices({}), null);
  assert.equal(coefficientChoices(null), null);
});
