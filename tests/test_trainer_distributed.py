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
#: A teacher slow enough to be interrupted (48 pairs of 600 Heun steps, 12 batches), a short optimisation.
SLOW_TEACHER = ["--toy", "gmm", "--nfe", "3", "--pairs", "48", "--teacher-steps", "600", "--iterations", "5",
                "--batch-size", "8", "--micro-batch-size", "2", "--sampling-batch-size", "4"]


def torchrun(out: Path, *extra, settings=SETTINGS) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "comfyui_dyweight", "train", *settings, "--out", str(out), *extra]


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


def test_a_rank_saving_after_a_peer_stopped_is_not_cut_short_by_the_next_signal():
    """``torchrun`` sends SIGTERM to the remaining ranks just after one stops: a rank then saving the pairs or
    the state it finished must not be interrupted by it (on a busy machine rank 0 lost its teacher pairs so).
    One process keeps Ctrl-C as it is."""
    from comfyui_dyweight.trainer import distributed

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def terminate_self():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs in this (main) thread at the next bytecode

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        try:
            with distributed.signals_ignored(distributed.Ranks(rank=0, world=2)):
                terminate_self()
        except KeyboardInterrupt:
            pytest.fail("the SIGTERM cut the save of a rank of two short")
        assert signal.getsignal(signal.SIGTERM) is stop
        with pytest.raises(KeyboardInterrupt):
            with distributed.signals_ignored(distributed.SINGLE):
                terminate_self()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_two_ranks_give_the_phi_of_one_process_and_write_once(one_process, tmp_path):
    done = subprocess.run(torchrun(tmp_path), env=environment(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_phi(load_file(str(tmp_path / PHI)), one_process)
    assert done.stdout.count("wrote 1 Φ files") == 1  # rank 0 only
    assert [path.name for path in tmp_path.glob("*.safetensors")] == [PHI]


def interrupt_rank_1(command: list, log: Path, when: str) -> str:
    """Run ``command`` (torchrun, 2 ranks), press Ctrl-C on rank 1 only once the log matches ``when``, and
    return the log when every process has stopped."""
    with open(log, "w") as output:
        launcher = subprocess.Popen(command, env=environment(), stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while launcher.poll() is None and time.monotonic() < deadline:
            if re.search(when, log.read_text(errors="replace")):
                break
            time.sleep(0.05)
        ranks = [int(pid) for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGINT)  # Ctrl-C on rank 1 only: rank 0 must notice, save and stop
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    return log.read_text(errors="replace")


def test_ctrl_c_on_one_rank_leaves_a_state_that_resume_finishes_as_if_uninterrupted(one_process, tmp_path):
    text = interrupt_rank_1(torchrun(tmp_path), tmp_path / "interrupted.log", r"NFE 3:[^\r\n]*\b(1[0-9]|2[0-9])/60")
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


def test_ctrl_c_during_the_teacher_keeps_the_pairs_every_rank_finished(tmp_path):
    """Each rank saves the teacher pairs it finished (a part file beside the pairs; the peer may be gone,
    so nothing is gathered first); ``--resume`` runs only the others and gives the Φ of one process."""
    assert main(["train", *SLOW_TEACHER, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "ranks"
    text = interrupt_rank_1(torchrun(out, settings=SLOW_TEACHER), tmp_path / "interrupted.log",
                            r"teacher pairs:[^\r\n]*\b(1[2-9]|2[0-9])/48")
    assert "--resume" in text, text[-3000:]
    state = out / ".dyweight-state" / "toy-gmm"
    parts = sorted(state.glob("pairs-*.part-*.safetensors"))
    indices = [load_file(str(part))["index"].tolist() for part in parts]
    finished = sorted(index for part in indices for index in part)
    assert 2 <= len(parts) and finished == sorted(set(finished)) and 8 <= len(finished) < 48, (indices, text[-2000:])
    assert [{index // 4 % 2 for index in part} for part in indices] == [{0}, {1}]  # batch b on rank b mod 2

    resumed = subprocess.run(torchrun(out, "--resume", settings=SLOW_TEACHER), env=environment(),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    first = re.search(r"teacher pairs:[^\r\n|]*\|[^|]*\|\s*(\d+)/48", resumed.stderr)
    assert first and int(first.group(1)) == len(finished), resumed.stderr[-3000:]  # it starts from them
    assert not list(state.glob("pairs-*.part-*"))
    (pairs,) = state.glob("pairs-*.safetensors")
    with safe_open(str(pairs), "pt") as stored:
        assert json.loads(stored.metadata()["dyweight_pairs"])["complete"]
    assert_same_phi(load_file(str(out / PHI)), load_file(str(tmp_path / "one" / PHI)))
