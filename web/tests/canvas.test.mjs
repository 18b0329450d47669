import test from "node:test";
import assert from "node:assert/strict";
import { fitText } from "../lib/canvas.js";
import { recordingContext } from "./helpers.mjs";

test("fitText cuts with an ellipsis", () => {
  const ctx = recordingContext();
  ctx.font = "10px x";
  assert.equal(fitText(ctx, "short", 100), "short");
  const cut = fitText(ctx, "a much longer line of text", 60);
  assert.ok(cut.endsWith("\u2026") && cut.length * 6 <= 60);
  assert.equal(fitText(ctx, "x", 0), "");
});
