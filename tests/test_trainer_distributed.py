"""``torchrun`` with 2 ranks on the CPU (gloo), in real processes: the Φ of one process, Ctrl-C, ``--resume``.

The oracle is the same command in one plain process: the ranks split the teacher batches, the
micro-batches and the held-out batches, so any work done twice or left out, or gradients not summed
across ranks, gives another Φ.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from comfyui_dyweight.cli import main

#: Micro-batches of 2 in batches of 8 (4 per step, 2 per rank), held-out batches of 4 (2 per rank).
SETTINGS = ["--toy", "gmm", "--nfe", "3", "--pairs", "40", "--teacher-steps", "8", "--iterations", "60",
            "--batch-size", "8", "--micro-batch-size", "2", "--sampling-batch-size", "4"]
PHI = "toy-gmm-nfe3.safetensors"


def torchrun(out: Path, *extra) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "comfyui_dyweight", "train", *SETTINGS, "--out", str(out), *extra]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DYWEIGHT_DIST_TIMEOUT": "60"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    assert main(["train", *SETTINGS, "--out", str(out)]) == 0
    return load_file(str(out / PHI))


def assert_same_phi(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for name in reference:
        assert (ours[name].double() - reference[name].double()).abs().max() <= 1e-5, name


def test_two_ranks_give_the_phi_of_one_process_and_write_once(one_process, tmp_path):
    done = subprocess.run(torchrun(tmp_path), env=environment(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_phi(load_file(str(tmp_path / PHI)), one_process)
    assert done.stdout.count("wrote 1 Φ files") == 1  # rank 0 only
    assert [path.name for path in tmp_path.glob("*.safetensors")] == [PHI]


def test_ctrl_c_on_one_rank_leaves_a_state_that_resume_finishes_as_if_uninterrupted(one_process, tmp_path):
    log = tmp_path / "interrupted.log"
    with open(log, "w") as output:
        launcher = subprocess.Popen(torchrun(tmp_path), env=environment(), stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while launcher.poll() is None and time.monotonic() < deadline:
            if re.search(r"NFE 3:[^\r\n]*\b(1[0-9]|2[0-9])/60", log.read_text(errors="replace")):
                break
            time.sleep(0.05)
        ranks = [int(pid) for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGINT)  # Ctrl-C on rank 1 only: rank 0 must notice, save and stop
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "rank 0 of 2: another rank stopped" in text and "--resume" in text, text[-3000:]
    assert (tmp_path / ".dyweight-state" / "toy-gmm" / "state.safetensors").is_file()
    assert not (tmp_path / PHI).exists()
    with safe_open(str(tmp_path / ".dyweight-state" / "toy-gmm" / "state.safetensors"), "pt") as state:
        (saved,) = json.loads(state.metadata()["dyweight_state"])["runs"]
    assert 0 < saved["iteration"] < 60

    resumed = subprocess.run(torchrun(tmp_path, "--resume"), env=environment(), capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_same_phi(load_file(str(tmp_path / PHI)), one_process)
