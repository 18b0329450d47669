// What the Φ chart (phi_chart.js) and the training chart (training_chart.js) share: the theme, the
// spacing, fonts, the panel background and text that fits. Takes a CanvasRenderingContext2D (or anything
// with the same methods); creates no DOM.

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

export const PAD = 8;
export const LINE = 14;
export const LABEL_W = 34;

export function font(size, weight = "normal", family = THEME.font) {
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

/** ``text`` in at most ``maxLines`` lines of ``width``, the last cut with "…" if needed. */
export function wrap(ctx, text, width, maxLines) {
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

/** The rounded panel every chart is drawn on. */
export function panel(ctx, width, height) {
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

export function dashed(ctx, on) {
  if (ctx.setLineDash) ctx.setLineDash(on ? [4, 3] : []);
}
