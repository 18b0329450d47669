// Test helpers (not a test file): a recording stand-in for CanvasRenderingContext2D, and the fixtures.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

export function fixture(name) {
  return JSON.parse(readFileSync(join(HERE, "fixtures", name), "utf8"));
}

/** A 2D context that records every call; measureText assumes 0.6 em per character. */
export function recordingContext() {
  const calls = [];
  const state = { font: "10px sans-serif", fillStyle: "#000", strokeStyle: "#000", lineWidth: 1,
    textAlign: "left", textBaseline: "alphabetic", globalAlpha: 1 };
  const size = () => Number(/(\d+(?:\.\d+)?)px/.exec(state.font)?.[1] ?? 10);
  const ctx = new Proxy(state, {
    get(target, prop) {
      if (prop === "calls") return calls;
      if (prop === "measureText") return (text) => ({ width: String(text).length * size() * 0.6 });
      if (prop in target) return target[prop];
      return (...args) => { calls.push({ op: prop, args, fillStyle: target.fillStyle, font: target.font }); };
    },
    set(target, prop, value) { target[prop] = value; calls.push({ op: "set", prop, value }); return true; },
  });
  return ctx;
}

/** Every numeric argument of every recorded call is finite. */
export function allFinite(calls) {
  return calls.every((c) => (c.args ?? []).every((a) => typeof a !== "number" || Number.isFinite(a)));
}

export function texts(calls) {
  return calls.filter((c) => c.op === "fillText").map((c) => c.args[0]);
}
