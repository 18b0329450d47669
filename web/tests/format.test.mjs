import test from "node:test";
import assert from "node:assert/strict";
import { basename, fmt, fmtFixed, fmtSigned, formatEta, int, num } from "../lib/format.js";

test("num and int accept finite numbers only", () => {
  assert.equal(num(1.5), 1.5);
  assert.equal(num("2"), 2);
  for (const bad of [null, undefined, NaN, Infinity, "x", true]) assert.equal(num(bad), null);
  assert.equal(int(7.9), 7);
  assert.equal(int(null), null);
});

test("fmt is compact and uses a real minus sign", () => {
  assert.equal(fmt(0.012345), "0.0123");
  assert.equal(fmt(-1.33333), "\u22121.33");
  assert.equal(fmt(2000), "2000");
  assert.equal(fmt(0.0000123), "1.23e-5");
  assert.equal(fmt(null), "\u2013");
  assert.equal(fmt(0), "0");
});

test("fixed and signed weights", () => {
  assert.equal(fmtFixed(1.9166), "1.92");
  assert.equal(fmtFixed(-0.5), "\u22120.50");
  assert.equal(fmtFixed(-0.001), "0.00");
  assert.equal(fmtSigned(0.123), "+0.12");
  assert.equal(fmtSigned(-0.123), "\u22120.12");
  assert.equal(fmtSigned(0.0001), "0.00");
});

test("ETA text", () => {
  assert.equal(formatEta(null), "");
  assert.equal(formatEta(0.4), "0s");
  assert.equal(formatEta(45), "45s");
  assert.equal(formatEta(185), "3m 05s");
  assert.equal(formatEta(3720), "1h 02m");
  assert.equal(formatEta(-5), "0s");
});

test("basename", () => {
  assert.equal(basename("shipped/adams_bashforth/ab-nfe5.safetensors"), "ab-nfe5.safetensors");
  assert.equal(basename(null), "");
});
