"""Shared pytest setup: the real ComfyUI host harness (see comfy_host.py / comfy_server.py)."""
import os
import sys

# The suite's models are tiny: one thread per process is much faster than two threads fighting over
# two shared cores (and subprocesses, the ComfyUI server included, inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import comfy_host  # noqa: E402


@pytest.fixture(scope="session")
def host():
    """Host facts (path, is_modern, has_ipndm, ...); skips with a printed reason if no host."""
    return comfy_host.import_host()


@pytest.fixture(scope="session")
def tiny_sd15(host):
    """Tiny seeded SD1.5-family EPS ModelPatcher (shared: clone() before patching it)."""
    return comfy_host.tiny_sd15_model(seed=0)


@pytest.fixture(scope="session")
def tiny_flux(host):
    """Tiny seeded Flux ModelPatcher; skips on hosts without flow models."""
    return comfy_host.tiny_flux_model(seed=0)


def pytest_report_header(config):
    try:
        where = comfy_host.find_comfyui()
    except RuntimeError as e:
        where = f"invalid ({e})"
    return f"ComfyUI host: {where or 'none (' + comfy_host.NO_HOST_REASON + ')'}"
