"""``python -m comfyui_dyweight.trainer train`` on a real ComfyUI checkpoint, in a real process.

The checkpoint is the harness's tiny SD1.5 file (written once per module), loaded by the host's own
loader from ``--comfyui <host>``. Both hosts' ``comfy.sd`` import torchvision (the 2024 one through
``comfy.ldm.cascade.stage_c_coder``), which PyPI's CUDA torchvision cannot do beside the CPU torch here,
so the command runs through the test harness's launcher (``comfy_server.py --launch``), which declares
the missing op schemas and then runs the trainer's ``__main__`` as ``python -m`` does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import comfy_host
from comfyui_dyweight.coefficients import Coefficients
from comfyui_dyweight.cli import main

TESTS = Path(__file__).resolve().parent
PROMPTS = "a photo of a cat\n\n   a watercolour landscape  \n\n"
SMALL = ["--nfe", "3", "--pairs", "8", "--teacher-steps", "8", "--width", "64", "--height", "64", "--cfg", "5",
         "--batch-size", "2", "--cpu"]
#: Runs the trainer's ``__main__`` as ``python -m`` does, after the launcher's torchvision set-up; Ctrl-C
#: raises KeyboardInterrupt even when the test runner was started with SIGINT ignored (a background job).
RUNNER = ("import runpy, signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
          "runpy.run_module('comfyui_dyweight.trainer', run_name='__main__', alter_sys=True)\n")


@pytest.fixture(scope="module")
def workspace(host, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli_comfy")
    checkpoint = root / "models" / "checkpoints" / comfy_host.write_tiny_checkpoint(root / "models")
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    runner = root / "run_trainer.py"
    runner.write_text(RUNNER)
    return types.SimpleNamespace(root=root, host=host, checkpoint=checkpoint, prompts=prompts, runner=runner,
                                 cache=root / "cache")


def trainer_arguments(workspace, *arguments, settings=SMALL) -> list:
    return ["train", "--comfyui", str(workspace.host.path), "--prompts", str(workspace.prompts), *settings,
            "--cache-dir", str(workspace.cache), *arguments]


def command_line(workspace, *arguments, settings=SMALL) -> dict:
    """The command, to run in a fresh process (single-threaded, offline) from the workspace folder."""
    command = [sys.executable, str(TESTS / "comfy_server.py"), "--launch", str(workspace.runner),
               *trainer_arguments(workspace, *arguments, settings=settings)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("COMFYUI_PATH", None)  # --comfyui names the host
    return {"args": command, "cwd": workspace.root, "env": env}


def train(workspace, *arguments, timeout=240, settings=SMALL):
    return subprocess.run(**command_line(workspace, *arguments, settings=settings), capture_output=True, text=True,
                          timeout=timeout)


def interrupt(workspace, when: str, *arguments, timeout=240):
    """Run the command and press Ctrl-C (SIGINT) once its stderr matches ``when``; (exit status, stderr)."""
    log = workspace.root / "interrupted.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(**command_line(workspace, *arguments), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if re.search(when, log.read_text(errors="replace")):
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.1)
        return process.wait(timeout=60), log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()


def host_baselines(host) -> list:
    from comfyui_dyweight.host.training_target import BASELINES

    return [name for name in BASELINES if name in host.sampler_names]


def test_train_resumes_after_ctrl_c_refuses_to_overwrite_and_reuses_the_teacher_cache(workspace, capsys):
    out = workspace.root / "phi"
    stem = workspace.checkpoint.stem
    checkpoint = ["--checkpoint", str(workspace.checkpoint), "--iterations", "10", "--out", str(out)]

    status, stderr = interrupt(workspace, r"NFE 3:[^\r\n]*\b[3-8]/10", *checkpoint)
    assert status == 130 and "--resume" in stderr, stderr
    assert not (out / f"{stem}-nfe3.safetensors").exists()
    assert (out / ".dyweight-state" / stem / "state.safetensors").is_file()

    done = train(workspace, *checkpoint, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    # the interrupted run encoded the negative and both prompts; the resumed one reads them back
    assert f"3 of 3 prompt encodings (the negative included) reused from {workspace.cache / 'encodings'}" \
        in done.stderr, done.stderr
    phi = Coefficients.load(out / f"{stem}-nfe3.safetensors")
    assert (phi.nfe, phi.model_family, phi.prediction, phi.cfg) == (3, "SD15", "eps", 5.0)
    assert phi.schedule == {"kind": "comfy", "scheduler": "karras"} and phi.divisor == "sigma"
    assert phi.training["prompts"] == ["a photo of a cat", "a watercolour landscape"]
    assert phi.training["base_model"] == workspace.checkpoint.name
    assert phi.training["teacher"] == "comfyui:dpmpp_2m" and phi.training["teacher_steps"] == 8
    assert (phi.training["pairs"], phi.training["iterations"]) == (8, 10)
    document = json.loads((out / f"{stem}-validation.json").read_text())
    (row,) = document["table"]
    assert row["nfe"] == 3 and row["iterations"] == 10 and list(row["baselines"]) == host_baselines(workspace.host)
    assert [entry[0] for entry in document["history"]["3"]["dyweight"]["train"]] == list(range(1, 11))
    assert "| 3 |" in (out / f"{stem}-validation.md").read_text()
    assert not list(out.rglob("*.partial"))
    (cached,) = workspace.cache.glob("*.safetensors")
    cached_at = cached.stat().st_mtime_ns

    before = (out / f"{stem}-nfe3.safetensors").read_bytes()
    # The refusal comes before ComfyUI is imported or anything loads, so this run can be in-process.
    assert main(trainer_arguments(workspace, *checkpoint)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / f"{stem}-nfe3.safetensors").read_bytes() == before

    again = train(workspace, "--checkpoint", str(workspace.checkpoint), "--iterations", "1", "--out", str(out),
                  "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "teacher pairs: reused from the cache" in again.stdout
    assert cached.stat().st_mtime_ns == cached_at and len(list(workspace.cache.glob("*.safetensors"))) == 1
    assert json.loads((out / f"{stem}-validation.json").read_text())["timings"]["teacher_cache_hit"] is True
    assert Coefficients.load(out / f"{stem}-nfe3.safetensors").training["iterations"] == 1


def test_a_diffusion_model_with_its_text_encoder_is_the_same_model_as_the_checkpoint(workspace):
    """The checkpoint split into UNet and CLIP-L files, loaded as UNETLoader + CLIPLoader load them: same
    Φ fields, and the same model identity and conditioning, so the checkpoint's teacher pairs are reused
    (when the first test ran) and the file stem names the output."""
    state = load_file(str(workspace.checkpoint))
    unet = workspace.root / "split" / "tiny_unet.safetensors"
    clip = workspace.root / "split" / "tiny_clip_l.safetensors"
    unet.parent.mkdir(exist_ok=True)
    for path, prefix in ((unet, "model.diffusion_model."), (clip, "cond_stage_model.transformer.")):
        save_file({key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}, str(path))
    del state
    out = workspace.root / "phi-split"
    cached_before = set(workspace.cache.glob("*.safetensors"))

    done = train(workspace, "--diffusion-model", str(unet), "--text-encoder", str(clip), "--clip-type",
                 "stable_diffusion", "--iterations", "1", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    phi = Coefficients.load(out / "tiny_unet-nfe3.safetensors")
    assert (phi.model_family, phi.prediction, phi.cfg, phi.schedule["scheduler"]) == ("SD15", "eps", 5.0, "karras")
    assert phi.training["base_model"] == "tiny_unet.safetensors"
    if cached_before:
        assert "teacher pairs: reused from the cache" in done.stdout
        assert set(workspace.cache.glob("*.safetensors")) == cached_before


@pytest.mark.parametrize("arguments, message", [
    (["--checkpoint", "x.safetensors"], "--prompts FILE"),
    (["--diffusion-model", "x.safetensors", "--prompts", "{prompts}"], "--text-encoder"),
    (["--checkpoint", "x.safetensors", "--diffusion-model", "y.safetensors", "--prompts", "{prompts}"], "not both"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--iterations", "-1"], "iterations must be ≥ 0"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--micro-batch-size", "0"], "micro_batch_size"),
    (["--checkpoint", "x.safetensors", "--prompts", "{empty}"], "no prompts"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--width", "100"], "multiple of 8"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--comfyui", "{tmp}"], "not a ComfyUI folder"),
    (["--toy", "gmm", "--checkpoint", "x.safetensors"], "exactly one model source"),
    (["--toy", "gmm"], "--out is required"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--cfg-range", "5", "2"], "0 ≤ LOW ≤ HIGH"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--cfg", "3", "--cfg-range", "1", "2"],
     "--cfg-range replaces --cfg"),
    (["--checkpoint", "x.safetensors", "--prompts", "{prompts}", "--cfg-range", "1", "2", "--guidance-range", "1",
      "2"], "not both"),
])
def test_options_that_do_not_fit_are_refused_before_anything_loads(arguments, message, tmp_path, capsys):
    """Checked by the command line alone: ComfyUI is not imported (the folder only has to look like one)."""
    folder = tmp_path / "ComfyUI"
    (folder / "comfy").mkdir(parents=True)
    (folder / "folder_paths.py").touch()
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    (tmp_path / "empty.txt").write_text("\n  \n")
    values = {"prompts": tmp_path / "prompts.txt", "empty": tmp_path / "empty.txt", "tmp": tmp_path}
    filled = [argument.format(**values) for argument in arguments]
    assert main(["train", "--comfyui", str(folder), *filled]) == 2
    assert message in capsys.readouterr().err


def test_a_cfg_range_on_the_command_line_trains_one_phi_for_it(workspace):
    """``--cfg-range 2 4``: the Φ records the range and the report gives the held-out error at its ends
    and middle."""
    out = workspace.root / "phi-cfg-range"
    cfg = SMALL.index("--cfg")
    done = train(workspace, "--checkpoint", str(workspace.checkpoint), "--cfg-range", "2", "4", "--iterations", "1",
                 "--out", str(out), settings=SMALL[:cfg] + SMALL[cfg + 2:])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CFG 2–4" in done.stderr
    phi = Coefficients.load(out / f"{workspace.checkpoint.stem}-nfe3.safetensors")
    assert phi.cfg == {"kind": "cfg", "min": 2.0, "max": 4.0}
    _, guidance_table = done.stdout.split("| NFE | guidance | kept Φ | its init |")
    assert re.findall(r"^\| 3 \| ([0-9.]+) \|", guidance_table, re.MULTILINE) == ["2", "3", "4"]


def test_prompts_are_encoded_and_guided_exactly_as_the_stock_nodes_do(workspace):
    """encode_prompt is CLIPTextEncode; with_guidance is FluxGuidance's conditioning_set_values."""
    import comfy.sd
    import nodes
    import torch

    from comfyui_dyweight.host.encodings import encode_prompt
    from comfyui_dyweight.host.training_target import with_guidance

    with torch.inference_mode():
        clip = comfy.sd.load_checkpoint_guess_config(str(workspace.checkpoint), output_vae=False)[1]
        ours = encode_prompt(clip, "a photo of a cat")
        (stock,) = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")
    assert len(ours) == len(stock) == 1 and torch.equal(ours[0][0], stock[0][0])
    assert ours[0][1].keys() == stock[0][1].keys()
    assert torch.equal(ours[0][1]["pooled_output"], stock[0][1]["pooled_output"])
    with pytest.raises(ValueError, match="no text encoder"):
        encode_prompt(None, "a photo of a cat")

    if not (workspace.host.path / "node_helpers.py").is_file():
        pytest.skip("this host has no FLUX guidance (node_helpers.conditioning_set_values)")
    import node_helpers

    guided, reference = with_guidance(ours, 2.5), node_helpers.conditioning_set_values(ours, {"guidance": 2.5})
    assert guided[0][1] == {**ours[0][1], "guidance": 2.5} and guided[0][1].keys() == reference[0][1].keys()
    assert guided[0][0] is reference[0][0] and "guidance" not in ours[0][1]


def test_prompt_files_read_txt_and_the_releases_jsonl_and_name_a_bad_line(tmp_path, capsys):
    from comfyui_dyweight.cli.comfy_source import read_prompts

    (tmp_path / "p.txt").write_text(PROMPTS, encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt") == ["a photo of a cat", "a watercolour landscape"]
    lines = ['{"prompt": "A remote control toilet and sink in the back."}', "",
             '{"caption": "  a dog on a skateboard "}', '{"text": "a red bus", "id": 3}']
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.jsonl") == ["A remote control toilet and sink in the back.",
                                                  "a dog on a skateboard", "a red bus"]
    folder = tmp_path / "ComfyUI"
    (folder / "comfy").mkdir(parents=True)
    (folder / "folder_paths.py").touch()
    for bad, message in [('{"prompt": "ok"}\n{"prompt": "ok"\n', "line 2: not JSON"),
                         ('{"prompt": "ok"}\n\n{"title": "no caption"}\n', "line 3: no caption"),
                         ('["a list"]\n', "line 1: no caption")]:
        (tmp_path / "bad.jsonl").write_text(bad, encoding="utf-8")
        assert main(["train", "--comfyui", str(folder), "--checkpoint", "x.safetensors",
                     "--prompts", str(tmp_path / "bad.jsonl")]) == 2
        assert message in capsys.readouterr().err


def test_three_hundred_prompts_train_in_one_process(workspace):
    """All 300 prompts are encoded and handed to the trainer (the earlier adapter nested one sampling
    call per prompt and died of recursion from about 120); a few pairs keep the teacher short, twelve
    prompts in one sampling batch. The tiny checkpoint's text encoder is a full CLIP-L: encoding the
    300 prompts takes a few minutes on one CPU thread."""
    prompts = workspace.root / "many.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"photo number {index} of a cat"}) + "\n"
                               for index in range(300)), encoding="utf-8")
    out = workspace.root / "many"
    done = train(workspace, "--checkpoint", str(workspace.checkpoint), "--prompts", str(prompts), "--pairs", "12",
                 "--teacher-steps", "4", "--iterations", "2", "--batch-size", "4", "--sampling-batch-size", "12",
                 "--out", str(out), "--name", "many", "--state-dir", str(out / "state"), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    phi = Coefficients.load(out / "many-nfe3.safetensors")
    assert len(phi.training["prompts"]) == 300 and phi.training["prompts"][299] == "photo number 299 of a cat"
    assert "300 prompt(s)" in done.stderr and phi.training["pairs"] == 12
