// Φ JSON (nodes/phi_json.py) → what the Φ chart draws. Plain ES module, no DOM.
//
// W is [N, K]: row n = step n, column k = the gradient k steps back (k = 0 newest); entries with k > n
// have no gradient yet. The row sum Σ_k W[n,k] is the implicit time shift; s_n is the time scale.
// The reference is the Adams–Bashforth (iPNDM) rows of the same shape, i.e. the untrained solver.

import { basename, fmt, fmtFixed, fmtSigned, num } from "./format.js";

export const MODES = Object.freeze({ WEIGHTS: "weights", DELTA: "delta" });
const SAME = 5e-4; // |Δ| below this counts as "equal to the reference"

// Diverging palette on a dark panel: negative → blue, 0 → panel grey, positive → amber.
const ZERO = [46, 50, 58];
const POSITIVE = [245, 166, 35];
const NEGATIVE = [64, 156, 255];

function mix(a, b, t) {
  return a.map((v, i) => Math.round(v + (b[i] - v) * t));
}

function luminance([r, g, b]) {
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}

/** Fill and text colour of a heat-map cell for ``value`` on a symmetric scale of ±``maxAbs``. */
export function cellColor(value, maxAbs) {
  const v = num(value);
  if (v === null) return { fill: "rgb(60,30,30)", text: "#f88" };
  const scale = maxAbs > 0 ? Math.min(1, Math.abs(v) / maxAbs) : 0;
  const t = Math.pow(scale, 0.7);
  const rgb = mix(ZERO, v >= 0 ? POSITIVE : NEGATIVE, t);
  return { fill: `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`, text: luminance(rgb) > 0.5 ? "#15171a" : "#e8eaed" };
}

function matrix(value) {
  if (!Array.isArray(value) || value.length === 0) return null;
  if (!value.every((row) => Array.isArray(row) && row.length === value[0].length && row.length > 0)) return null;
  return value.map((row) => row.map(num));
}

function vector(value, length) {
  if (!Array.isArray(value) || value.length !== length) return null;
  return value.map(num);
}

/** Why ``phi`` cannot be drawn, or null. */
export function phiProblem(phi) {
  if (!phi || typeof phi !== "object") return "no coefficients";
  const weights = matrix(phi.weights);
  if (!weights) return "the coefficients have no [N, K] weight matrix";
  if (!vector(phi.time_scale, weights.length)) return "the time scales do not match the weights";
  return null;
}

function scheduleText(schedule) {
  if (!schedule || typeof schedule !== "object") return "";
  switch (schedule.kind) {
    case "comfy": return String(schedule.scheduler ?? "comfy");
    case "edm": return `EDM \u03c1=${fmt(schedule.rho)}${schedule.to_zero ? " to 0" : ""}`;
    case "flux": return `FLUX \u03bc=${fmt(schedule.mu)}`;
    case "explicit": return "explicit \u03c3";
    case "ddpm_time": return "DDPM t \u2192 model \u03c3(t)";
    default: return String(schedule.kind ?? "");
  }
}

function sourceLine(source) {
  if (!source || typeof source !== "object" || !source.repository) return null;
  const commit = source.commit ? `@${String(source.commit).slice(0, 7)}` : "";
  return `from ${source.repository}${commit}${source.licence ? ` (${source.licence})` : ""}`;
}

function trainingLines(training, isReference, source) {
  const t = training && typeof training === "object" ? training : {};
  const iterations = num(t.iterations);
  const lines = [];
  const origin = sourceLine(source);
  if (origin) {
    lines.push(`searched${t.base_model ? ` on ${t.base_model}` : ""}`, origin);
    return lines;
  }
  if (!iterations) {
    const init = t.initialiser ? String(t.initialiser).replace(/\(order=(\d)\)/, " K=$1") : "Adams\u2013Bashforth";
    lines.push(`untrained: ${init}${isReference ? " (= reference)" : ""}`);
    if (t.note) lines.push(String(t.note));
    return lines;
  }
  const parts = [`trained ${fmt(iterations)} it`];
  if (t.teacher) parts.push(`teacher ${t.teacher}${num(t.teacher_steps) ? "\u00d7" + num(t.teacher_steps) : ""}`);
  if (num(t.pairs)) parts.push(`${num(t.pairs)} pairs`);
  if (num(t.loss) !== null) parts.push(`loss ${fmt(t.loss)}`);
  lines.push(parts.join(" \u00b7 "));
  const v = t.validation && typeof t.validation === "object" ? t.validation : null;
  const val = [];
  if (v && num(v.rmse) !== null) val.push(`val RMSE ${fmt(v.rmse)}`);
  if (v && num(v.psnr) !== null) val.push(`PSNR ${fmt(v.psnr)} dB`);
  const baseline = v && (num(v.reference_rmse) ?? num(v.baseline_rmse) ?? num(v.ipndm_rmse) ?? num(v.adams_bashforth_rmse));
  if (baseline !== null && baseline !== undefined) val.push(`AB ${fmt(baseline)}`);
  if (t.base_model) val.push(`for ${basename(String(t.base_model))}`);
  if (val.length) lines.push(val.join(" \u00b7 "));
  return lines;
}

/**
 * The Φ chart's data.
 * @param {object} phi  Φ JSON from the routes or a node's ``dyweight_phi`` UI output.
 * @param {object} [options]  ``{origin}``: a short note on where it came from ("preset", "last run", …).
 * @returns {object} ``{ok:false, error}`` or the view: cells, sums, scales, ranges, facts, labels.
 */
export function phiView(phi, options = {}) {
  const problem = phiProblem(phi);
  if (problem) return { ok: false, error: problem };
  const weights = matrix(phi.weights);
  const steps = weights.length;
  const order = weights[0].length;
  const scales = vector(phi.time_scale, steps);
  let reference = matrix(phi.reference_weights);
  if (!reference || reference.length !== steps || reference[0].length !== order) reference = null;
  const sums = weights.map((row) => row.reduce((a, b) => a + (b ?? 0), 0));
  const refSums = reference ? reference.map((row) => row.reduce((a, b) => a + (b ?? 0), 0)) : null;

  const cells = [];
  let maxAbs = 0;
  let maxAbsDelta = 0;
  let isReference = reference !== null;
  for (let k = 0; k < order; k++) {
    for (let n = 0; n < steps; n++) {
      const available = k <= n;
      const value = weights[n][k];
      const ref = reference ? reference[n][k] : null;
      const delta = value !== null && ref !== null ? value - ref : null;
      if (available && value !== null) maxAbs = Math.max(maxAbs, Math.abs(value));
      if (available && delta !== null) maxAbsDelta = Math.max(maxAbsDelta, Math.abs(delta));
      if (available && (delta === null || Math.abs(delta) > SAME)) isReference = false;
      cells.push({ n, k, available, value, ref, delta, text: fmtFixed(value), deltaText: fmtSigned(delta) });
    }
  }
  if (scales.some((s) => s === null || Math.abs(s - 1) > SAME)) isReference = false;

  const usedScales = phi.afs ? scales.slice(1) : scales; // with AFS, s_0 is never used
  const lineValues = [...sums, ...usedScales, 1, ...(refSums ?? [])].filter((v) => v !== null);
  let lo = Math.min(...lineValues);
  let hi = Math.max(...lineValues);
  const pad = Math.max((hi - lo) * 0.12, 0.05);
  lo -= pad;
  hi += pad;

  const family = phi.model_family || "any model";
  const prediction = phi.prediction || "any prediction";
  const nfe = num(phi.nfe) ?? steps - (phi.afs ? 1 : 0);
  const modelParts = [family, prediction];
  const schedule = scheduleText(phi.schedule);
  if (schedule) modelParts.push(schedule);
  if (num(phi.cfg) !== null) modelParts.push(`CFG ${fmt(phi.cfg)}`);
  if (num(phi.sigma_min) !== null && num(phi.sigma_max) !== null) {
    modelParts.push(`\u03c3 ${fmt(phi.sigma_min)}\u2013${fmt(phi.sigma_max)}`);
  }
  const shape = [`NFE ${nfe}`, `${steps} steps${phi.afs ? " (AFS)" : ""}`, `K=${order}`,
    phi.divisor === "net_sigma" ? "\u00f7 s\u00b7\u03c3" : "\u00f7 \u03c3"];
  if (phi.solver === "dss") shape.unshift("DSS");
  if (phi.combine === "denoised") shape.push("combines x\u2080");
  const facts = [shape.join(" \u00b7 "), modelParts.join(" \u00b7 "),
    ...trainingLines(phi.training, isReference, phi.source)];

  const name = typeof phi.name === "string" && phi.name ? phi.name : null;
  const title = name ? basename(name) : `\u03a6 for NFE ${nfe}`;
  return {
    ok: true,
    name,
    title,
    origin: options.origin ? String(options.origin) : "",
    nfe,
    steps,
    order,
    afs: Boolean(phi.afs),
    trained: Boolean(num(phi.training?.iterations)),
    isReference,
    hasReference: reference !== null,
    referenceLabel: phi.reference_label || "Adams\u2013Bashforth",
    cells,
    maxAbs: maxAbs || 1,
    maxAbsDelta: maxAbsDelta || 1,
    sums,
    refSums,
    scales,
    lineRange: { min: lo, max: hi },
    stepLabels: Array.from({ length: steps }, (_, n) => (phi.afs && n === 0 ? "AFS" : String(n))),
    slotLabels: Array.from({ length: order }, (_, k) => `k=${k}`),
    facts,
    summary: typeof phi.summary === "string" ? phi.summary : "",
  };
}

/** Colour of one cell in the given mode (weights, or difference to the reference). */
export function cellStyle(view, cell, mode = MODES.WEIGHTS) {
  if (!cell.available) return { fill: "rgba(255,255,255,0.03)", text: "#666", label: "" };
  if (mode === MODES.DELTA) {
    const colour = cellColor(cell.delta, view.maxAbsDelta);
    return { ...colour, label: cell.deltaText };
  }
  return { ...cellColor(cell.value, view.maxAbs), label: cell.text };
}

/** The tooltip text of one cell. */
export function cellTooltip(view, cell) {
  const slot = cell.k === 0 ? "newest gradient" : `gradient ${cell.k} step${cell.k > 1 ? "s" : ""} back`;
  if (!cell.available) return `step ${cell.n}, ${slot}: no gradient yet`;
  const lines = [`step ${cell.n}, ${slot}: w = ${fmt(cell.value, 4)}`];
  if (cell.ref !== null) lines.push(`${view.referenceLabel}: ${fmt(cell.ref, 4)} (\u0394 ${fmtSigned(cell.delta, 3)})`);
  return lines.join("\n");
}

/** The tooltip text of one step's line-chart values. */
export function stepTooltip(view, n) {
  const scale = view.afs && n === 0 ? "s unused (analytical first step)" : `s = ${fmt(view.scales[n], 4)}`;
  const lines = [`step ${view.stepLabels[n]}: \u03a3w = ${fmt(view.sums[n], 4)} (time shift), ${scale}`];
  if (view.refSums) lines.push(`${view.referenceLabel}: \u03a3w = ${fmt(view.refSums[n], 4)}, s = 1`);
  return lines.join("\n");
}
