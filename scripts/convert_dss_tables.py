"""Regenerate the shipped DSS presets (``coefficients/presets/dss/``) from the DSS release's numbers.

    python scripts/convert_dss_tables.py dss_searched_solvers.json [--out coefficients/presets/dss]

The JSON document holds the tables printed in MCG-NJU/NeuralSolver (``{"source": "... <commit> ...",
"tables": {"flow_sit" | "flow_flowdcn" | "ddpm_dit": {"step<N>": {"timedeltas", "coeffs"}}}}``); the
mapping is :mod:`comfyui_dyweight.release.dss_tables` and docs/dss.md. The MIT notice of the release is
``coefficients/presets/dss/NOTICE.md``.
"""

import argparse

from comfyui_dyweight.release.dss_tables import DSS_PRESET_DIR, write_dss_presets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="JSON document with the release's timedeltas and coeffs per table")
    parser.add_argument("--out", default=str(DSS_PRESET_DIR), help="folder for the .safetensors presets")
    arguments = parser.parse_args(argv)
    for path in write_dss_presets(arguments.source, arguments.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
