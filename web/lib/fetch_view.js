// The "fetch the paper's coefficients" button of Load DyWeight Coefficients: its label for a state of
// GET /dyweight/fetch-official (nodes/official_fetch.py), and the file list from /object_info. No DOM.
import { int } from "./format.js";

export const FETCH_LABEL = "fetch the paper's coefficients";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** True while the server is still fetching. */
export function fetchRunning(state) {
  return state?.status === "running";
}

/** The button's text for a fetch state (null or "idle": the plain label). */
export function fetchLabel(state) {
  const status = state?.status;
  if (status === "running") {
    if (state.phase === "download") {
      const index = int(state.index) ?? 0;
      const count = int(state.count) ?? 0;
      const total = int(state.total) ?? 0;
      const percent = total > 0 ? Math.min(100, Math.floor((100 * (int(state.done) ?? 0)) / total)) : 0;
      return `downloading ${index + 1}/${count} \u00b7 ${percent}%`;
    }
    return state.phase === "convert" ? "converting\u2026" : "checking\u2026";
  }
  if (status === "done") {
    const written = Array.isArray(state.written) ? state.written.length : 0;
    const present = Array.isArray(state.present) ? state.present.length : 0;
    if (!written) return `${FETCH_LABEL} (all ${present} present)`;
    return `${FETCH_LABEL} (${plural(written, "new file")})`;
  }
  if (status === "error") return `${FETCH_LABEL} (failed: retry)`;
  return FETCH_LABEL;
}

/** What the page shows when a fetch failed: the problem, then the manual steps. */
export function fetchErrorText(state) {
  const problem = state?.error ? String(state.error) : "the fetch failed";
  return state?.manual ? `${problem}\n\n${state.manual}` : problem;
}

/** The Load node's coefficient names in an /object_info/DyWeightLoadCoefficients answer, or null. */
export function coefficientChoices(objectInfo) {
  const values = objectInfo?.DyWeightLoadCoefficients?.input?.required?.coefficients?.[0];
  return Array.isArray(values) ? values.map(String) : null;
}
