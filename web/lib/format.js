// Number and time formatting shared by the Φ and training views. Plain ES module, no DOM.

const MINUS = "\u2212";

/** A finite number or null. */
export function num(value) {
  if (value === null || value === undefined || typeof value === "boolean") return null;
  const n = typeof value === "number" ? value : Number(value);
  return Number.isFinite(n) ? n : null;
}

/** A finite integer (truncated) or null. */
export function int(value) {
  const n = num(value);
  return n === null ? null : Math.trunc(n);
}

function withMinus(text) {
  return text.startsWith("-") ? MINUS + text.slice(1) : text;
}

/** A compact number: 3 significant digits, exponent form for very small/large values, "–" for none. */
export function fmt(value, digits = 3) {
  const n = num(value);
  if (n === null) return "\u2013";
  if (n === 0) return "0";
  const a = Math.abs(n);
  if (a >= 1e5 || a < 1e-3) return withMinus(n.toExponential(Math.max(0, digits - 1)).replace("e+", "e"));
  if (Number.isInteger(n) && a < 1e5) return withMinus(String(n));
  return withMinus(String(Number(n.toPrecision(digits))));
}

/** A weight with fixed decimals (for heat-map cells): "1.92", "−0.50". */
export function fmtFixed(value, decimals = 2) {
  const n = num(value);
  if (n === null) return "\u2013";
  const text = n.toFixed(decimals);
  return /^-0\.0*$/.test(text) ? text.slice(1) : withMinus(text);
}

/** A signed difference: "+0.12", "−0.03", "0.00". */
export function fmtSigned(value, decimals = 2) {
  const n = num(value);
  if (n === null) return "\u2013";
  const text = fmtFixed(n, decimals);
  if (/^0\.0*$/.test(text)) return text;
  return n > 0 ? "+" + text : text;
}

/** "45s", "3m 05s", "1h 02m" for a number of seconds; "" when unknown. */
export function formatEta(seconds) {
  const s = num(seconds);
  if (s === null) return "";
  const total = Math.max(0, Math.round(s));
  if (total < 60) return `${total}s`;
  if (total < 3600) return `${Math.floor(total / 60)}m ${String(total % 60).padStart(2, "0")}s`;
  const hours = Math.floor(total / 3600);
  if (hours >= 100) return `${hours}h`;
  return `${hours}h ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")}m`;
}

/** The last path segment of a coefficient name. */
export function basename(name) {
  if (typeof name !== "string" || !name) return "";
  const parts = name.split("/");
  return parts[parts.length - 1];
}
