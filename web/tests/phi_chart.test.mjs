import test from "node:test";
import assert from "node:assert/strict";
import { drawPhi, phiHit, phiLayout } from "../lib/phi_chart.js";
import { MODES, phiView } from "../lib/phi_view.js";
import { allFinite, fixture, recordingContext, texts } from "./helpers.mjs";

const trained = phiView(fixture("phi_trained.json"), { origin: "file" });
const ab = phiView(fixture("phi_ab_nfe5.json"), { origin: "preset" });

test("the phi chart draws every cell, the facts and both curves with finite coordinates", () => {
  for (const width of [240, 380, 640]) {
    for (const mode of [MODES.WEIGHTS, MODES.DELTA]) {
      const ctx = recordingContext();
      const layout = drawPhi(ctx, trained, width, { mode });
      assert.ok(allFinite(ctx.calls), `non-finite coordinates at width ${width}`);
      assert.ok(layout.height > 150 && layout.height < 400, `height ${layout.height}`);
      const rects = ctx.calls.filter((c) => c.op === "fillRect");
      assert.ok(rects.length >= trained.cells.length);
      const drawn = texts(ctx.calls);
      assert.ok(drawn.some((t) => t.startsWith("\u03a6  dyweight-sd15")), drawn[0]);
      assert.ok(drawn.includes("\u03a3w time shift") && drawn.includes("s time scale"));
      if (width >= 380) {
        assert.ok(drawn.includes(mode === MODES.DELTA ? trained.cells[0].deltaText : "1.05"), drawn.join("|"));
      }
      // left-aligned lines fit inside the panel (measureText is 0.6 em per character in the stand-in)
      for (const call of ctx.calls.filter((c) => c.op === "fillText" && c.args[1] < 10)) {
        const size = Number(/(\d+)px/.exec(call.font)[1]);
        assert.ok(String(call.args[0]).length * size * 0.6 <= width - call.args[1], call.args[0]);
      }
    }
  }
});

test("the layout keeps the heat map and the curves on the same columns", () => {
  const layout = phiLayout(trained, 380);
  assert.equal(layout.heat.x, layout.lines.x);
  assert.equal(layout.heat.w, layout.lines.w);
  assert.equal(layout.heat.h, layout.heat.cellH * trained.order);
  assert.ok(layout.lines.y > layout.heat.y + layout.heat.h);
  assert.ok(layout.height >= layout.legendY);
});

test("hit tests find cells, steps and the mode toggle", () => {
  const layout = phiLayout(trained, 380);
  const { heat, lines, toggle } = layout;
  const hit = phiHit(trained, layout, heat.x + 2.5 * heat.cellW, heat.y + 1.5 * heat.cellH);
  assert.deepEqual([hit.cell.n, hit.cell.k], [2, 1]);
  assert.deepEqual(phiHit(trained, layout, lines.x + 4.2 * heat.cellW, lines.y + 10), { step: 4 });
  assert.deepEqual(phiHit(trained, layout, toggle.x + 5, toggle.y + 5), { toggle: true });
  assert.equal(phiHit(trained, layout, 1, 1), null);
  assert.equal(phiHit({ ok: false }, phiLayout({ ok: false }, 380), 50, 50), null);
});

test("a message panel when there is nothing to draw", () => {
  const ctx = recordingContext();
  const layout = drawPhi(ctx, null, 380, { message: "cannot show these coefficients: 'x' is not a DyWeight coefficient file" });
  assert.ok(layout.height > 30);
  assert.ok(texts(ctx.calls).some((t) => t.startsWith("cannot show")));
  assert.ok(allFinite(ctx.calls));
});

test("the Adams-Bashforth preset draws without reference marks", () => {
  const ctx = recordingContext();
  drawPhi(ctx, ab, 380);
  assert.ok(allFinite(ctx.calls));
  assert.equal(ctx.calls.filter((c) => c.op === "closePath").length, 0);
  const marks = recordingContext();
  drawPhi(marks, trained, 380);
  assert.ok(marks.calls.filter((c) => c.op === "closePath").length > 0);
});
