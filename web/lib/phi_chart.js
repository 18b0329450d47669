// The Φ chart: the weights heat map (or their difference from Adams–Bashforth), the time shift Σw and the
// time scales s per step, with hit tests for tooltips. Draws the view from phi_view.js; creates no DOM.

import { dashed, fitText, font, LABEL_W, LINE, PAD, panel, THEME, wrap } from "./canvas.js";
import { fmtFixed } from "./format.js";
import { cellStyle, MODES } from "./phi_view.js";

/** Where everything of the Φ chart goes for a panel ``width`` CSS pixels wide. */
export function phiLayout(view, width) {
  if (!view || !view.ok) return { width, height: 2 * PAD + 3 * LINE, message: true };
  const factsTop = PAD;
  const factLines = 1 + view.facts.length;
  const headerY = factsTop + factLines * LINE + 6;
  const gridX = PAD + LABEL_W;
  const gridW = Math.max(40, width - gridX - PAD);
  const cellW = gridW / view.steps;
  const cellH = Math.max(15, Math.min(22, Math.round(cellW * 0.62)));
  const stepLabelY = headerY + LINE;
  const heatY = stepLabelY + 12;
  const heatH = cellH * view.order;
  const linesY = heatY + heatH + 12;
  const linesH = 66;
  const legendY = linesY + linesH + 6;
  const height = legendY + LINE + PAD - 2;
  return {
    width, height, factsTop, headerY, stepLabelY,
    heat: { x: gridX, y: heatY, w: gridW, h: heatH, cellW, cellH },
    lines: { x: gridX, y: linesY, w: gridW, h: linesH },
    legendY,
    toggle: { x: width - PAD - 92, y: headerY - 10, w: 92, h: 14 },
  };
}

/** The cell or step under (x, y), for tooltips: ``{cell}``, ``{step}``, ``{toggle: true}`` or null. */
export function phiHit(view, layout, x, y) {
  if (!view || !view.ok || !layout.heat) return null;
  const t = layout.toggle;
  if (x >= t.x && x <= t.x + t.w && y >= t.y && y <= t.y + t.h + 2) return { toggle: true };
  const { heat, lines } = layout;
  if (x < heat.x || x >= heat.x + heat.w) return null;
  const n = Math.min(view.steps - 1, Math.floor((x - heat.x) / heat.cellW));
  if (y >= heat.y && y < heat.y + heat.h) {
    const k = Math.min(view.order - 1, Math.floor((y - heat.y) / heat.cellH));
    return { cell: view.cells[k * view.steps + n] };
  }
  if (y >= lines.y && y <= lines.y + lines.h) return { step: n };
  return null;
}

function drawFacts(ctx, view, layout, width) {
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  let y = layout.factsTop + LINE / 2;
  ctx.font = font(12, "600");
  ctx.fillStyle = THEME.text;
  const origin = view.origin ? `  \u00b7 ${view.origin}` : "";
  const title = fitText(ctx, "\u03a6  " + view.title, width - 2 * PAD - (origin ? 90 : 0));
  ctx.fillText(title, PAD, y);
  if (origin) {
    const w = ctx.measureText(title).width;
    ctx.font = font(11);
    ctx.fillStyle = THEME.dim;
    ctx.fillText(fitText(ctx, origin, width - 2 * PAD - w), PAD + w, y);
  }
  ctx.font = font(11);
  view.facts.forEach((line, i) => {
    y += LINE;
    ctx.fillStyle = i < 2 ? THEME.text : (view.trained ? THEME.good : THEME.dim);
    ctx.fillText(fitText(ctx, line, width - 2 * PAD), PAD, y);
  });
}

function drawHeat(ctx, view, layout, mode, hover) {
  const { heat } = layout;
  ctx.font = font(10, "600");
  ctx.fillStyle = THEME.dim;
  ctx.textAlign = "left";
  ctx.fillText(mode === MODES.DELTA ? `\u0394 weights vs ${view.hasReference ? "AB" : "\u2013"}` : "weights W[n, k]", PAD, layout.headerY);
  // mode toggle, right-aligned
  const t = layout.toggle;
  ctx.font = font(10);
  ctx.textAlign = "right";
  const label = view.hasReference ? (mode === MODES.DELTA ? "[ show W ]" : "[ show \u0394 vs AB ]") : "";
  ctx.fillStyle = THEME.scale;
  ctx.fillText(label, t.x + t.w, layout.headerY);

  // step labels above the columns
  ctx.font = font(9, "normal", THEME.mono);
  ctx.fillStyle = THEME.dim;
  ctx.textAlign = "center";
  view.stepLabels.forEach((s, n) => ctx.fillText(s, heat.x + (n + 0.5) * heat.cellW, layout.stepLabelY + 4));
  ctx.textAlign = "right";
  ctx.fillText("step", heat.x - 4, layout.stepLabelY + 4);

  const showText = heat.cellW >= 24;
  const cellFont = font(heat.cellW >= 34 ? 10 : 9, "normal", THEME.mono);
  for (const cell of view.cells) {
    const x = heat.x + cell.n * heat.cellW;
    const y = heat.y + cell.k * heat.cellH;
    const style = cellStyle(view, cell, mode);
    ctx.fillStyle = style.fill;
    ctx.fillRect(x + 0.5, y + 0.5, heat.cellW - 1, heat.cellH - 1);
    if (!cell.available) {
      ctx.strokeStyle = "rgba(255,255,255,0.05)";
      ctx.beginPath();
      ctx.moveTo(x + 3, y + heat.cellH - 3);
      ctx.lineTo(x + heat.cellW - 3, y + 3);
      ctx.stroke();
      continue;
    }
    if (mode !== MODES.DELTA && view.hasReference && !view.isReference && cell.delta !== null && Math.abs(cell.delta) > 5e-4) {
      // a small corner mark where the weight differs from the reference
      ctx.fillStyle = cell.delta > 0 ? "rgba(255,255,255,0.75)" : "rgba(0,0,0,0.55)";
      ctx.beginPath();
      ctx.moveTo(x + heat.cellW - 1, y + 1);
      ctx.lineTo(x + heat.cellW - 6, y + 1);
      ctx.lineTo(x + heat.cellW - 1, y + 6);
      ctx.closePath();
      ctx.fill();
    }
    if (showText) {
      ctx.font = cellFont;
      ctx.fillStyle = style.text;
      ctx.textAlign = "center";
      ctx.fillText(style.label, x + heat.cellW / 2, y + heat.cellH / 2 + 0.5);
    }
  }
  if (hover && hover.cell) {
    ctx.strokeStyle = THEME.text;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(heat.x + hover.cell.n * heat.cellW + 1, heat.y + hover.cell.k * heat.cellH + 1, heat.cellW - 2, heat.cellH - 2);
    ctx.lineWidth = 1;
  }
  // slot labels
  ctx.font = font(9, "normal", THEME.mono);
  ctx.fillStyle = THEME.dim;
  ctx.textAlign = "right";
  view.slotLabels.forEach((s, k) => ctx.fillText(s, heat.x - 4, heat.y + (k + 0.5) * heat.cellH));
}

function drawLines(ctx, view, layout, hover) {
  const { lines } = layout;
  const { min, max } = view.lineRange;
  const yOf = (v) => lines.y + lines.h - ((v - min) / (max - min)) * lines.h;
  const xOf = (n) => lines.x + (n + 0.5) * (lines.w / view.steps);
  ctx.fillStyle = "rgba(255,255,255,0.025)";
  ctx.fillRect(lines.x, lines.y, lines.w, lines.h);
  // column guides
  ctx.strokeStyle = THEME.grid;
  ctx.beginPath();
  for (let n = 0; n < view.steps; n++) { ctx.moveTo(xOf(n), lines.y); ctx.lineTo(xOf(n), lines.y + lines.h); }
  ctx.stroke();
  if (hover && hover.step !== undefined) {
    ctx.fillStyle = "rgba(255,255,255,0.06)";
    ctx.fillRect(lines.x + hover.step * (lines.w / view.steps), lines.y, lines.w / view.steps, lines.h);
  }
  // y labels: min, 1, max
  ctx.font = font(9, "normal", THEME.mono);
  ctx.textAlign = "right";
  ctx.fillStyle = THEME.dim;
  const one = yOf(1);
  ctx.fillText(fmtFixed(max, 2), lines.x - 4, lines.y + 5);
  ctx.fillText(fmtFixed(min, 2), lines.x - 4, lines.y + lines.h - 4);
  if (one > lines.y + 12 && one < lines.y + lines.h - 12) ctx.fillText("1", lines.x - 4, one);
  // reference: AB rows sum to 1 (or their own sums) and s = 1
  ctx.strokeStyle = THEME.reference;
  ctx.globalAlpha = 0.55;
  dashed(ctx, true);
  ctx.beginPath();
  ctx.moveTo(lines.x, one);
  ctx.lineTo(lines.x + lines.w, one);
  ctx.stroke();
  if (view.refSums && view.refSums.some((v) => Math.abs(v - 1) > 1e-6)) {
    ctx.beginPath();
    view.refSums.forEach((v, n) => (n ? ctx.lineTo(xOf(n), yOf(v)) : ctx.moveTo(xOf(n), yOf(v))));
    ctx.stroke();
  }
  dashed(ctx, false);
  ctx.globalAlpha = 1;

  // with the analytical first step s_0 is never used (no model call at step 0)
  const scales = view.afs ? view.scales.map((v, n) => (n === 0 ? null : v)) : view.scales;
  const series = [
    { values: scales, colour: THEME.scale, marker: "square" },
    { values: view.sums, colour: THEME.sum, marker: "dot" },
  ];
  for (const { values, colour, marker } of series) {
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    values.forEach((v, n) => {
      if (v === null) { started = false; return; }
      if (started) ctx.lineTo(xOf(n), yOf(v)); else ctx.moveTo(xOf(n), yOf(v));
      started = true;
    });
    ctx.stroke();
    ctx.lineWidth = 1;
    values.forEach((v, n) => {
      if (v === null) return;
      ctx.beginPath();
      if (marker === "dot") {
        ctx.arc(xOf(n), yOf(v), 2.6, 0, Math.PI * 2);
        ctx.fill();
      } else { // hollow and larger, so it stays visible where it meets the sum (both 1 for Adams–Bashforth)
        ctx.rect(xOf(n) - 3.5, yOf(v) - 3.5, 7, 7);
        ctx.stroke();
      }
    });
  }
  // legend
  const y = layout.legendY + LINE / 2;
  let x = lines.x;
  ctx.textAlign = "left";
  ctx.font = font(10);
  const item = (draw, text, colour) => {
    draw(x, y);
    ctx.fillStyle = colour;
    ctx.fillText(text, x + 12, y);
    x += 16 + ctx.measureText(text).width + 10;
  };
  item((ix, iy) => { ctx.fillStyle = THEME.sum; ctx.beginPath(); ctx.arc(ix + 4, iy, 3, 0, Math.PI * 2); ctx.fill(); },
    "\u03a3w time shift", THEME.sum);
  item((ix, iy) => { ctx.strokeStyle = THEME.scale; ctx.strokeRect(ix + 1, iy - 3, 6, 6); }, "s time scale", THEME.scale);
  item((ix, iy) => {
    ctx.strokeStyle = THEME.reference; dashed(ctx, true); ctx.beginPath(); ctx.moveTo(ix - 2, iy); ctx.lineTo(ix + 9, iy); ctx.stroke(); dashed(ctx, false);
  }, "AB = 1", THEME.dim);
}

/**
 * Draw the Φ chart into ``ctx`` (already scaled to CSS pixels) for a panel ``width`` wide.
 * @returns the layout (for hit tests).
 */
export function drawPhi(ctx, view, width, { mode = MODES.WEIGHTS, hover = null, message = "" } = {}) {
  const layout = phiLayout(view, width);
  panel(ctx, width, layout.height);
  ctx.save();
  ctx.textBaseline = "middle";
  if (!view || !view.ok) {
    ctx.font = font(12, "600");
    ctx.fillStyle = THEME.text;
    ctx.textAlign = "left";
    ctx.fillText("\u03a6  DyWeight coefficients", PAD, PAD + LINE / 2);
    ctx.font = font(11);
    ctx.fillStyle = view && view.error ? THEME.error : THEME.dim;
    wrap(ctx, message || (view && view.error) || "loading\u2026", width - 2 * PAD, 2)
      .forEach((line, i) => ctx.fillText(line, PAD, PAD + LINE * (i + 1.5)));
    ctx.restore();
    return layout;
  }
  drawFacts(ctx, view, layout, width);
  drawHeat(ctx, view, layout, mode, hover);
  drawLines(ctx, view, layout, hover);
  ctx.restore();
  return layout;
}
