// The training chart: headline, progress bar, loss and validation curves, the result table and errors.
// Draws the view from training_view.js; creates no DOM.

import { fitText, font, LABEL_W, LINE, PAD, panel, THEME, wrap } from "./canvas.js";
import { fmt } from "./format.js";

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
