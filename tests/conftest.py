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

REPO_ROOT = os.path.dirname(TESTS_DIR)


class RootIsAFolder:
    """Collect the repository root as a plain folder, not as a Python package.

    The root is the custom-node package ComfyUI imports (its ``__init__.py`` uses relative imports);
    pytest would import that file under the folder's own name to look for ``setup_module``, which
    fails when the checkout's name is not a Python identifier (``ComfyUI-DyWeight``, as cloned). Rooting
    pytest at tests/ (tests/pytest.ini) is not enough: a run without paths (``bash tests/run``) still
    collects the root as a package. A plugin, not a hook here: the root's collector is chosen by
    conftests *above* it.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if str(path) == REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(RootIsAFolder(), "dyweight-root-is-a-folder")


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
