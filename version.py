"""The pack's version, recorded in every coefficient file it writes (kept equal to pyproject.toml)."""

__version__ = "0.1.0"
