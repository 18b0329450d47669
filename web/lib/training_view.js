// Training events (server message "dyweight.training") → state → what the training panel draws.
// Plain ES module, no DOM. applyTrainingEvent mirrors nodes/training_events.py (apply_event); both
// are checked against web/tests/fixtures/training_events.json.

import { fmt, formatEta, int, num } from "./format.js";

export const MAX_POINTS = 512;
export const MAX_TABLE_ROWS = 64;
export const KINDS = Object.freeze(["teacher", "train", "validation", "done", "error"]);

const FIELDS = {
  teacher: ["done", "total", "eta_s"],
  train: ["nfe", "iteration", "iterations", "loss", "eta_s"],
  validation: ["nfe", "iteration", "val_rmse", "best"],
  done: ["nfe", "table"],
  error: ["message", "nfe"],
};
const INTEGERS = new Set(["nfe", "iteration", "iterations", "done", "total"]);

/** The state of a node before any event (same keys as the Python state). */
export function newTrainingState(node) {
  return {
    node: String(node), status: null, started: null, updated: null,
    teacher: null, nfe: null, iteration: null, iterations: null, loss: null,
    eta_s: null, best: null, series: {}, table: [], message: null,
  };
}

function cleanRow(row) {
  const clean = { solver: row.solver == null ? null : String(row.solver).slice(0, 80), nfe: int(row.nfe), rmse: num(row.rmse) };
  if ("psnr" in row) clean.psnr = num(row.psnr);
  return clean;
}

/**
 * ``[{solver, nfe, rmse, psnr?}, ...]`` from a list of such rows, one such row, or the trainer's per-NFE
 * row ``{nfe, solver, rmse, families: {family: {rmse, init}}, baselines: {name: rmse}}``: each family, its
 * initialisation (``<family> init``), each baseline (as table_rows in nodes/training_events.py).
 */
export function tableRows(table, nfe = null) {
  if (table && typeof table === "object" && !Array.isArray(table)) {
    const families = table.families;
    if (!families || typeof families !== "object" || Array.isArray(families)) return "solver" in table ? [table] : [];
    const rowNfe = "nfe" in table ? table.nfe : nfe;
    const rows = [];
    for (const [family, figures] of Object.entries(families)) {
      if (!figures || typeof figures !== "object") continue;
      rows.push({ solver: family, nfe: rowNfe, rmse: figures.rmse }, { solver: `${family} init`, nfe: rowNfe, rmse: figures.init });
    }
    const baselines = table.baselines;
    if (baselines && typeof baselines === "object" && !Array.isArray(baselines)) {
      for (const [name, rmse] of Object.entries(baselines)) rows.push({ solver: name, nfe: rowNfe, rmse });
    }
    return rows;
  }
  if (Array.isArray(table)) return table.filter((row) => row && typeof row === "object" && !Array.isArray(row));
  return [];
}

/** The event with only its documented fields, numbers checked; null for an unknown kind. */
export function cleanEvent(event) {
  if (!event || typeof event !== "object" || !KINDS.includes(event.kind)) return null;
  const clean = { kind: event.kind };
  for (const name of FIELDS[event.kind]) {
    if (!(name in event)) continue;
    const value = event[name];
    if (INTEGERS.has(name)) clean[name] = int(value);
    else if (name === "message") clean[name] = value == null ? null : String(value).slice(0, 2000);
    else if (name === "table") clean[name] = tableRows(value, event.nfe ?? null).map(cleanRow).slice(0, MAX_TABLE_ROWS);
    else clean[name] = num(value);
  }
  return clean;
}

const seriesKey = (nfe) => (nfe === null || nfe === undefined ? "?" : String(nfe));

function seriesOf(state, nfe) {
  const key = seriesKey(nfe);
  if (!state.series[key]) state.series[key] = { train: [], val: [], best: null };
  return state.series[key];
}

function push(points, x, y) {
  if (x === null || x === undefined || y === null || y === undefined) return;
  points.push([x, y]);
  if (points.length > MAX_POINTS) {
    const last = points.length - 1;
    const kept = points.filter((_, i) => i % 2 === 0 || i === last);
    points.length = 0;
    points.push(...kept);
  }
}

function mergeTable(table, rows) {
  for (const row of rows) {
    const index = table.findIndex((r) => r.solver === row.solver && r.nfe === row.nfe);
    if (index >= 0) table[index] = row;
    else table.push(row);
  }
  if (table.length > MAX_TABLE_ROWS) table.splice(0, table.length - MAX_TABLE_ROWS);
}

function startsNewJob(state, event) {
  if (state.status !== "done" && state.status !== "error") return false;
  if (event.kind === "teacher") return true;
  if (event.kind !== "train") return false;
  if (state.status === "error") return true;
  const series = state.series[seriesKey(event.nfe)];
  const last = series && series.train.length ? series.train[series.train.length - 1][0] : null;
  const iteration = event.iteration ?? null;
  return last !== null && iteration !== null && iteration <= last;
}

/**
 * Fold one event into a node's state (as the server does for GET /dyweight/training/{node}).
 * @param {object|null} state  the node's state, or null for a fresh one
 * @param {object} event  ``{node?, kind, ...}`` as received
 * @param {number} nowSec  the time stamp to record (seconds)
 * @returns {object} the new state (``state`` itself may be modified); unchanged for an unknown kind
 */
export function applyTrainingEvent(state, event, nowSec = Date.now() / 1000) {
  const clean = cleanEvent(event);
  let s = state || newTrainingState(event?.node ?? "");
  if (!clean) return s;
  if (startsNewJob(s, clean)) s = newTrainingState(s.node);
  const kind = clean.kind;
  s.status = kind;
  if (s.started === null) s.started = nowSec;
  s.updated = nowSec;
  if (clean.nfe !== undefined && clean.nfe !== null) s.nfe = clean.nfe;
  if (kind === "teacher") {
    s.teacher = { done: clean.done ?? null, total: clean.total ?? null, eta_s: clean.eta_s ?? null };
    s.eta_s = clean.eta_s ?? null;
  } else if (kind === "train") {
    for (const name of ["iteration", "iterations", "loss", "eta_s"]) s[name] = clean[name] ?? null;
    push(seriesOf(s, clean.nfe).train, clean.iteration ?? null, clean.loss ?? null);
  } else if (kind === "validation") {
    const series = seriesOf(s, clean.nfe);
    push(series.val, clean.iteration ?? null, clean.val_rmse ?? null);
    let best = clean.best ?? null;
    if (best === null) {
      const candidates = [series.best, clean.val_rmse ?? null].filter((v) => v !== null);
      best = candidates.length ? Math.min(...candidates) : null;
    }
    series.best = best;
    s.best = best;
  } else if (kind === "done") {
    s.eta_s = 0;
    mergeTable(s.table, clean.table || []);
  } else if (kind === "error") {
    s.message = clean.message || "training failed";
    s.eta_s = null;
  }
  return s;
}

/** A state from GET /dyweight/training/{node}; ``age_s`` moves into ``receivedAtMs`` on this clock. */
export function restoreTrainingState(json, nowMs = Date.now()) {
  if (!json || typeof json !== "object" || typeof json.node !== "string") return null;
  const state = { ...newTrainingState(json.node), ...json };
  if (!state.series || typeof state.series !== "object") state.series = {};
  if (!Array.isArray(state.table)) state.table = [];
  const age = num(json.age_s);
  delete state.age_s;
  return { state, receivedAtMs: nowMs - (age ?? 0) * 1000 };
}

/** Does a message for ``eventNode`` belong to a node with id ``nodeId`` (also inside a subgraph: "outer:inner")? */
export function eventIsFor(eventNode, nodeId) {
  if (eventNode === null || eventNode === undefined || nodeId === null || nodeId === undefined) return false;
  const e = String(eventNode);
  const id = String(nodeId);
  return e === id || e.endsWith(":" + id);
}

/** Ticks at 1·10^p (and 2·, 5·10^p when the range spans less than two decades). */
export function logTicks(lo, hi) {
  const steps = Math.log10(hi / lo) < 2 ? [1, 2, 5] : [1];
  const ticks = [];
  for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) {
    for (const m of steps) {
      const v = Number((m * Math.pow(10, p)).toPrecision(12));
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
    }
  }
  return ticks;
}

function range(values, log) {
  const finite = values.filter((v) => v !== null && Number.isFinite(v) && (!log || v > 0));
  if (!finite.length) return null;
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (log) {
    if (hi / lo < 1.5) { lo /= 1.25; hi *= 1.25; } else { lo /= 1.1; hi *= 1.1; }
  } else {
    const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
    lo -= pad; hi += pad;
  }
  return { min: lo, max: hi };
}

/**
 * What the training panel draws.
 * @param {object|null} state  a node's training state
 * @param {{receivedAtMs?: number, nowMs?: number}} [clock]  when the last event arrived, and now
 */
export function trainingView(state, clock = {}) {
  const nowMs = clock.nowMs ?? Date.now();
  if (!state || !state.status) {
    return { ok: true, empty: true, status: null, headline: "DyWeight training", detail: "waiting for the first progress report\u2026",
      progress: null, series: null, table: [], error: null };
  }
  const elapsed = num(clock.receivedAtMs) !== null ? Math.max(0, (nowMs - clock.receivedAtMs) / 1000) : 0;
  const eta = num(state.eta_s);
  const etaText = eta !== null && state.status !== "done" && state.status !== "error"
    ? formatEta(Math.max(0, eta - elapsed)) : "";

  const keys = Object.keys(state.series || {});
  const currentKey = state.nfe !== null && state.nfe !== undefined && state.series[String(state.nfe)] ? String(state.nfe)
    : keys[keys.length - 1];
  const current = currentKey ? state.series[currentKey] : null;

  let headline = "DyWeight training";
  let progress = null;
  const details = [];
  const nfeText = state.nfe !== null && state.nfe !== undefined ? `NFE ${state.nfe}` : "";
  switch (state.status) {
    case "teacher": {
      const t = state.teacher || {};
      headline = `Teacher pairs ${t.done ?? "?"} / ${t.total ?? "?"}`;
      if (num(t.done) !== null && num(t.total)) progress = Math.min(1, t.done / t.total);
      break;
    }
    case "train":
    case "validation": {
      headline = [nfeText, `iteration ${state.iteration ?? "?"} / ${state.iterations ?? "?"}`].filter(Boolean).join(" \u00b7 ");
      if (num(state.iteration) !== null && num(state.iterations)) progress = Math.min(1, state.iteration / state.iterations);
      if (state.status === "validation") details.push("validating");
      break;
    }
    case "done":
      headline = `Done${nfeText ? " \u00b7 " + nfeText : ""}`;
      progress = 1;
      break;
    case "error":
      headline = "Training failed";
      break;
    default:
      break;
  }
  if (num(state.loss) !== null && state.status !== "teacher") details.push(`loss ${fmt(state.loss)}`);
  if (num(state.best) !== null) details.push(`best val ${fmt(state.best)}`);
  if (etaText) details.push(`ETA ${etaText}`);

  let series = null;
  if (current && (current.train.length || current.val.length)) {
    const ys = [...current.train.map((p) => p[1]), ...current.val.map((p) => p[1])];
    const positive = ys.every((v) => v > 0);
    const log = positive && Math.max(...ys) / Math.min(...ys) > 3;
    const xs = [...current.train.map((p) => p[0]), ...current.val.map((p) => p[0])];
    const xMax = Math.max(num(state.iterations) && currentKey === String(state.nfe) ? state.iterations : 0, ...xs);
    const y = range(ys, log) || { min: 0, max: 1 };
    series = {
      nfe: currentKey,
      train: current.train,
      val: current.val,
      best: current.best,
      log,
      x: { min: Math.min(0, ...xs), max: Math.max(1, xMax) },
      y,
      yTicks: log ? logTicks(y.min, y.max) : [y.min, (y.min + y.max) / 2, y.max],
      others: keys.filter((k) => k !== currentKey),
    };
  }

  const bestByNfe = new Map();
  for (const row of state.table || []) {
    const rmse = num(row.rmse);
    if (rmse === null) continue;
    const key = String(row.nfe);
    if (!bestByNfe.has(key) || rmse < bestByNfe.get(key)) bestByNfe.set(key, rmse);
  }
  const hasPsnr = (state.table || []).some((row) => num(row.psnr) !== null);
  const table = (state.table || []).map((row) => ({
    cells: [String(row.solver ?? "?"), row.nfe === null || row.nfe === undefined ? "" : String(row.nfe), fmt(row.rmse, 4),
      ...(hasPsnr ? [num(row.psnr) === null ? "" : fmt(row.psnr, 3)] : [])],
    best: num(row.rmse) !== null && bestByNfe.get(String(row.nfe)) === num(row.rmse),
    dyweight: /dyweight/i.test(String(row.solver ?? "")),
  }));
  return {
    ok: true,
    empty: false,
    status: state.status,
    headline,
    detail: details.join(" \u00b7 "),
    etaText,
    progress,
    series,
    table,
    tableHeader: ["solver", "NFE", "RMSE", ...(hasPsnr ? ["PSNR"] : [])],
    error: state.status === "error" ? String(state.message || "training failed") : null,
  };
}
