#!/usr/bin/env bash
# Mutation testing of coefficients/ with mutmut 3 (PyPI), on the tests that cover it (no ComfyUI host,
# no reference data): every surviving mutant is a formula change no test notices.
#   bash scripts/mutation_test.sh                # run, then list the survivors
#   bash scripts/mutation_test.sh --max-children 2
#   cd "$MUTMUT_STAGE" && mutmut show <name>     # the diff of one survivor (the stage is kept)
#   MUTMUT_STAGE=<that stage> bash scripts/mutation_test.sh <name or glob>...   # re-run some mutants there
# The last run's figures and every survivor with why it changes no result: bench/results/mutation.md.
#
# mutmut names each mutant after the module path of its file and needs the package importable under
# that name, but this repository *is* the package (its root imports as `comfyui_dyweight`). So the
# run happens in a stage folder holding a copy as comfyui_dyweight/ plus the tests, with the mutmut
# settings written there; nothing in this checkout is changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python -c "import mutmut" 2>/dev/null || python -m pip install --quiet --disable-pip-version-check "mutmut>=3.3,<4"
stage="${MUTMUT_STAGE:-$(mktemp -d -t dyweight-mutmut.XXXXXX)}"
mkdir -p "$stage/comfyui_dyweight"
tar -C "$root" --exclude=./.git --exclude=./.pkg --exclude=./tests --exclude=./out --exclude=./mutants \
  --exclude='__pycache__' -cf - . | tar -C "$stage/comfyui_dyweight" -xf -
rm -rf "$stage/tests" && cp -r "$root/tests" "$stage/tests"
cat > "$stage/pyproject.toml" <<'EOF'
[tool.mutmut]
source_paths = ["comfyui_dyweight/coefficients"]
also_copy = ["comfyui_dyweight"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [
    "tests/test_update_rule.py", "tests/test_update_rule_oracles.py", "tests/test_coefficient_file.py",
    "tests/test_coefficient_boundaries.py", "tests/test_schedules_and_summary.py", "tests/test_presets.py",
    "tests/test_fuzz_parsers.py", "tests/test_dss.py",
]
EOF
echo "mutmut stage: $stage"
cd "$stage"
# The reference tables are optional test data; the run measures what the always-run tests catch.
# Each mutant reruns the tests that reach it, so the fuzz tests draw fewer examples here.
export DYWEIGHT_REFERENCE=/nonexistent DYWEIGHT_FUZZ_EXAMPLES=25 OMP_NUM_THREADS=1 PYTHONPATH=
mutmut run "$@" || true
mutmut results
