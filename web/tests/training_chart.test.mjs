import test from "node:test";
import assert from "node:assert/strict";
import { drawTraining } from "../lib/training_chart.js";
import { applyTrainingEvent, trainingView } from "../lib/training_view.js";
import { allFinite, fixture, recordingContext, texts } from "./helpers.mjs";

test("the training panel: curve, legend, table and error", () => {
  const events = fixture("training_events.json").events.filter((e) => e.node === "5");
  let state = null;
  events.forEach((e, i) => { state = applyTrainingEvent(state, e, i); });
  const view = trainingView(state, { receivedAtMs: 0, nowMs: 0 });
  const ctx = recordingContext();
  const layout = drawTraining(ctx, view, 380);
  assert.ok(allFinite(ctx.calls));
  assert.equal(layout.table.rows, 4);
  assert.ok(layout.height > layout.table.y + 5 * layout.table.rowH);
  const drawn = texts(ctx.calls);
  for (const t of ["Done \u00b7 NFE 6", "solver", "PSNR", "dyweight", "0.09", "train loss"]) assert.ok(drawn.includes(t), t);

  const failed = trainingView(applyTrainingEvent(state, { node: "5", kind: "error", message: "x ".repeat(200) }, 99));
  const errCtx = recordingContext();
  const errLayout = drawTraining(errCtx, failed, 300);
  assert.equal(errLayout.errorLines, 3);
  assert.ok(allFinite(errCtx.calls));

  const empty = recordingContext();
  assert.ok(drawTraining(empty, trainingView(null), 380).height >= 64);
});
