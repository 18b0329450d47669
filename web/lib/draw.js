// Canvas drawing of the Φ chart and the training panel. Takes a CanvasRenderingContext2D (or anything
// with the same methods) and the views from phi_view.js / training_view.js; creates no DOM.

import { fmt, fmtFixed } from "./format.js";
import { cellStyle, MODES } from "./phi_view.js";

export const THEME = Object.freeze({
  panel: "#17191d",
  border: "#2c3038",
  text: "#e3e5e8",
  dim: "#9aa0a9",
  faint: "#5d636d",
  grid: "rgba(255,255,255,0.07)",
  sum: "#f5a623",
  scale: "#4fd1c5",
  reference: "#c7ccd4",
  train: "#f5a623",
  val: "#4fd1c5",
  other: "#6b7280",
  good: "#7ee07e",
  error: "#ff7b7b",
  font: "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif",
  mono: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
});

const PAD = 8;
const LINE = 14;
const LABEL_W = 34;

function font(size, weight = "normal", family = THEME.font) {
  return `${weight} ${size}px ${family}`;
}

/** ``text`` cut with "…" to fit ``width`` under the current font. */
export function fitText(ctx, text, width) {
  if (width <= 0) return "";
  if (ctx.measureText(text).width <= width) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + "\u2026").width <= width) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + "\u2026";
}

function wrap(ctx, text, width, maxLines) {
  const words = String(text).split(/\s+/);
  const lines = [];
  let line = "";
  for (const word of words) {
    const next = line ? line + " " + word : word;
    if (ctx.measureText(next).width <= width || !line) line = next;
    else { lines.push(line); line = word; }
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) {
    lines.length = maxLines;
    lines[maxLines - 1] = fitText(ctx, lines[maxLines - 1] + " \u2026", width);
  }
  return lines;
}

function panel(ctx, width, height) {
  ctx.save();
  ctx.fillStyle = THEME.panel;
  ctx.strokeStyle = THEME.border;
  ctx.lineWidth = 1;
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(0.5, 0.5, width - 1, height - 1, 6);
  else ctx.rect(0.5, 0.5, width - 1, height - 1);
  ctx.fill();
  ctx.stroke();
  ctx.restore();
}

function dashed(ctx, on) {
  if (ctx.setLineDash) ctx.setLineDash(on ? [4, 3] : []);
}

// --- Φ ------------------------------------------------------------------------------------------

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

// --- training ------------------------------------------------------------------------------------

/** Where everything of the training panel goes for a panel ``width`` wide. */
export function trainingLayout(view, width) {
  const headY = PAD;
  const barY = headY + 2 * LINE + 3;
  let y = barY + 8;
  const chart = view && view.series ? { x: PAD + LABEL_W, y, w: Math.max(40, width - 2 * PAD - LABEL_W), h: 104 } : null;
  if (chart) y += chart.h + 4 + LINE + 4;
  const errorLines = view && view.error ? 3 : 0;
  const errorY = y;
  y += errorLines * LINE;
  const rows = view && view.table ? view.table.length : 0;
  const table = rows ? { x: PAD, y: y + 2, w: width - 2 * PAD, rowH: 15, rows } : null;
  if (table) y += 2 + (rows + 1) * table.rowH + 4;
  return { width, height: Math.max(y + PAD - 4, 64), headY, barY, chart, errorY, errorLines, table };
}

function drawLossChart(ctx, view, chart) {
  const s = view.series;
  const tx = (x) => chart.x + ((x - s.x.min) / (s.x.max - s.x.min || 1)) * chart.w;
  const ty = s.log
    ? (y) => chart.y + chart.h - ((Math.log10(y) - Math.log10(s.y.min)) / (Math.log10(s.y.max) - Math.log10(s.y.min) || 1)) * chart.h
    : (y) => chart.y + chart.h - ((y - s.y.min) / (s.y.max - s.y.min || 1)) * chart.h;
  ctx.fillStyle = "rgba(255,255,255,0.025)";
  ctx.fillRect(chart.x, chart.y, chart.w, chart.h);
  ctx.font = font(9, "normal", THEME.mono);
  ctx.textAlign = "right";
  for (const tick of s.yTicks) {
    const y = ty(tick);
    if (!Number.isFinite(y)) continue;
    ctx.strokeStyle = THEME.grid;
    ctx.beginPath();
    ctx.moveTo(chart.x, y);
    ctx.lineTo(chart.x + chart.w, y);
    ctx.stroke();
    ctx.fillStyle = THEME.dim;
    ctx.fillText(fmt(tick, 2), chart.x - 4, Math.min(chart.y + chart.h - 4, Math.max(chart.y + 5, y)));
  }
  ctx.textAlign = "left";
  ctx.fillText("0", chart.x, chart.y + chart.h + 7);
  ctx.textAlign = "right";
  ctx.fillText(`${fmt(s.x.max)} it`, chart.x + chart.w, chart.y + chart.h + 7);

  ctx.save();
  ctx.beginPath();
  ctx.rect(chart.x, chart.y, chart.w, chart.h);
  ctx.clip();
  ctx.strokeStyle = THEME.train;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  s.train.forEach(([x, y], i) => {
    if (s.log && !(y > 0)) return;
    if (i) ctx.lineTo(tx(x), ty(y)); else ctx.moveTo(tx(x), ty(y));
  });
  ctx.stroke();
  if (s.train.length < 40) {
    ctx.fillStyle = THEME.train;
    s.train.forEach(([x, y]) => {
      if (s.log && !(y > 0)) return;
      ctx.beginPath();
      ctx.arc(tx(x), ty(y), 1.8, 0, Math.PI * 2);
      ctx.fill();
    });
  }
  ctx.strokeStyle = THEME.val;
  ctx.fillStyle = THEME.val;
  ctx.beginPath();
  s.val.forEach(([x, y], i) => (i ? ctx.lineTo(tx(x), ty(y)) : ctx.moveTo(tx(x), ty(y))));
  ctx.stroke();
  s.val.forEach(([x, y]) => {
    ctx.beginPath();
    ctx.arc(tx(x), ty(y), y === s.best ? 3.6 : 2.4, 0, Math.PI * 2);
    ctx.fill();
  });
  ctx.restore();
  ctx.lineWidth = 1;

  const y = chart.y + chart.h + 4 + LINE / 2 + 6;
  let x = chart.x;
  ctx.font = font(10);
  ctx.textAlign = "left";
  ctx.strokeStyle = THEME.train;
  ctx.lineWidth = 1.5;
  ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x + 10, y); ctx.stroke();
  ctx.lineWidth = 1;
  ctx.fillStyle = THEME.train;
  const trainLabel = "train loss";
  ctx.fillText(trainLabel, x + 14, y);
  x += 14 + ctx.measureText(trainLabel).width + 12;
  ctx.fillStyle = THEME.val;
  ctx.beginPath(); ctx.arc(x + 4, y, 2.6, 0, Math.PI * 2); ctx.fill();
  const valLabel = `val RMSE${s.best !== null && s.best !== undefined ? ` (best ${fmt(s.best)})` : ""}`;
  ctx.fillText(valLabel, x + 12, y);
  x += 12 + ctx.measureText(valLabel).width + 12;
  ctx.fillStyle = THEME.dim;
  const nfeLabel = `NFE ${s.nfe}${s.log ? " \u00b7 log" : ""}`;
  ctx.fillText(fitText(ctx, nfeLabel, chart.x + chart.w - x), x, y);
}

function drawTable(ctx, view, table) {
  const n = view.tableHeader.length;
  const widths = n === 4 ? [0.4, 0.14, 0.23, 0.23] : [0.46, 0.18, 0.36];
  const xs = [];
  let acc = table.x;
  for (const w of widths) { xs.push(acc); acc += w * table.w; }
  const cellX = (i) => (i === 0 ? xs[0] + 4 : xs[i] + widths[i] * table.w - 4);
  ctx.textAlign = "left";
  ctx.font = font(10, "600");
  ctx.fillStyle = THEME.dim;
  view.tableHeader.forEach((h, i) => {
    ctx.textAlign = i === 0 ? "left" : "right";
    ctx.fillText(h, cellX(i), table.y + table.rowH / 2);
  });
  ctx.strokeStyle = THEME.border;
  ctx.beginPath();
  ctx.moveTo(table.x, table.y + table.rowH);
  ctx.lineTo(table.x + table.w, table.y + table.rowH);
  ctx.stroke();
  view.table.forEach((row, r) => {
    const y = table.y + (r + 1) * table.rowH;
    if (row.dyweight) {
      ctx.fillStyle = "rgba(245,166,35,0.10)";
      ctx.fillRect(table.x, y, table.w, table.rowH);
    }
    row.cells.forEach((text, i) => {
      ctx.font = i === 0 ? font(10, row.dyweight ? "600" : "normal") : font(10, "normal", THEME.mono);
      ctx.fillStyle = i === 2 && row.best ? THEME.good : THEME.text;
      ctx.textAlign = i === 0 ? "left" : "right";
      ctx.fillText(fitText(ctx, text, widths[i] * table.w - 8), cellX(i), y + table.rowH / 2 + 0.5);
    });
  });
}

/** Draw the training panel; returns its layout. */
export function drawTraining(ctx, view, width) {
  const layout = trainingLayout(view, width);
  panel(ctx, width, layout.height);
  ctx.save();
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  ctx.font = font(12, "600");
  ctx.fillStyle = view.status === "error" ? THEME.error : THEME.text;
  ctx.fillText(fitText(ctx, view.headline, width - 2 * PAD), PAD, layout.headY + LINE / 2);
  ctx.font = font(11);
  ctx.fillStyle = THEME.dim;
  ctx.fillText(fitText(ctx, view.detail || "", width - 2 * PAD), PAD, layout.headY + LINE * 1.5);
  // progress bar
  ctx.fillStyle = "rgba(255,255,255,0.08)";
  ctx.fillRect(PAD, layout.barY, width - 2 * PAD, 4);
  if (view.progress !== null && view.progress !== undefined) {
    ctx.fillStyle = view.status === "done" ? THEME.good : THEME.train;
    ctx.fillRect(PAD, layout.barY, (width - 2 * PAD) * Math.max(0, Math.min(1, view.progress)), 4);
  }
  if (layout.chart) drawLossChart(ctx, view, layout.chart);
  if (view.error) {
    ctx.font = font(11);
    ctx.fillStyle = THEME.error;
    ctx.textAlign = "left";
    wrap(ctx, view.error, width - 2 * PAD, layout.errorLines)
      .forEach((line, i) => ctx.fillText(line, PAD, layout.errorY + LINE * (i + 0.5)));
  }
  if (layout.table) drawTable(ctx, view, layout.table);
  ctx.restore();
  return layout;
}
