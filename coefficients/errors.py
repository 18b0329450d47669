"""Errors raised for a bad Φ or a bad coefficient file."""


class CoefficientError(ValueError):
    """A Φ (weights, time scales, flags or metadata) that cannot be used as it is."""


class CoefficientFileError(CoefficientError):
    """A coefficient file that cannot be loaded.

    ``reason`` is a short machine-readable tag (``"missing"``, ``"truncated"``, ``"pickle"``,
    ``"not_safetensors"``, ``"metadata_missing"``, ``"metadata_malformed"``, ``"format_version"``,
    ``"shape"``, ``"non_finite"``, ``"invalid"``); the message names the file, the problem and what
    to do about it.
    """

    def __init__(self, path, reason: str, problem: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"DyWeight coefficient file '{self.path}': {problem}")


class SamplingError(RuntimeError):
    """The update rule met a state it must not continue from (t̃ ≤ 0, non-finite values)."""
