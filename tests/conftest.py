"""Shared pytest setup: the real ComfyUI host harness (see comfy_host.py / comfy_server.py)."""
import os
import sys

import pytest

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
