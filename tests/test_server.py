"""A real headless ComfyUI server with the pack: API workflows with our nodes, and bad input as node errors."""

import time
from pathlib import Path

import pytest

import comfy_host
from comfy_server import run_server
from comfyui_dyweight.coefficients import adams_bashforth

REPO = Path(__file__).resolve().parents[1]


def text_to_image(sampler_node: dict, checkpoint=comfy_host.TINY_CHECKPOINT_NAME, empty_latent="EmptyLatentImage") -> dict:
    """checkpoint → prompts → empty latent → `sampler_node` (id 5, may use node 9) → decode → save."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": empty_latent, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": sampler_node,
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "dyweight"}},
    }


def ksampler_dyweight(**coefficients) -> dict:
    return {"class_type": "KSamplerDyWeight", "inputs": {
        "model": ["1", 0], "seed": 3, "steps": "4", "cfg": 5.0, "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["4", 0], "denoise": 1.0, **coefficients}}


def stock_ksampler_dyweight(steps, scheduler):
    return {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 3, "steps": steps, "cfg": 5.0, "sampler_name": "dyweight", "scheduler": scheduler,
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}


def run_and_save(server, workflow) -> dict:
    """Run `workflow`; its SaveImage must have written an image. Returns the /history entry."""
    entry = server.wait(server.post_prompt(workflow), timeout=180)
    assert [f for f in server.output_files(entry) if f.is_file()], entry
    return entry


def wait_for_failure(server, prompt_id, timeout=120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.history(prompt_id)
        if entry is not None:
            status = entry.get("status") or {}
            assert status.get("status_str") == "error", f"expected the prompt to fail: {status}"
            errors = [m[1] for m in status.get("messages", []) if m and m[0] == "execution_error"]
            return " ".join(str(e.get("exception_message", "")) for e in errors)
        time.sleep(0.25)
    server.fail(f"prompt {prompt_id} did not finish within {timeout:.0f}s")


def test_server_runs_our_nodes_and_survives_a_bad_coefficient_file(host, tmp_path):
    base = tmp_path / "server"
    comfy_host.write_tiny_checkpoint(base / "models")
    folder = base / "models" / "dyweight"
    folder.mkdir(parents=True)
    adams_bashforth(4, 3, prediction="eps", model_family="SD15").save(folder / "mine-nfe4.safetensors")
    (folder / "corrupt.safetensors").write_bytes(b"\x80\x04 a pickle pretending to be coefficients")

    with run_server(base, custom_nodes=[REPO], timeout=180) as server:
        info = server.object_info()
        if "KSamplerDyWeight" not in info:
            server.fail("the pack's nodes were not registered by the server")
        assert "dyweight" in info["KSampler"]["input"]["required"]["sampler_name"][0]
        listed = info["DyWeightLoadCoefficients"]["input"]["required"]["coefficients"][0]
        if "mine-nfe4.safetensors" not in listed:
            pytest.skip(f"this host does not read models/dyweight under the test's base directory ({listed[:3]}…)")

        with_file = text_to_image(ksampler_dyweight(coefficients=["9", 0]))
        with_file["9"] = {"class_type": "DyWeightLoadCoefficients", "inputs": {"coefficients": "mine-nfe4.safetensors"}}
        entry = run_and_save(server, with_file)
        assert entry["outputs"]["9"]["dyweight_phi"][0]["nfe"] == 4

        broken = text_to_image(ksampler_dyweight(coefficients=["9", 0]))
        broken["9"] = {"class_type": "DyWeightLoadCoefficients", "inputs": {"coefficients": "corrupt.safetensors"}}
        message = wait_for_failure(server, server.post_prompt(broken))
        assert "corrupt.safetensors" in message and "pickle" in message

        run_and_save(server, text_to_image(stock_ksampler_dyweight(4, "karras")))  # still serving after the failure


@pytest.fixture(scope="module")
def fresh_install(host, tmp_path_factory):
    """One server on a fresh install: an empty models/dyweight, the tiny SD1.5 checkpoint and, on a host with
    flow models, the tiny SD3 (rectified flow) one."""
    base = tmp_path_factory.mktemp("fresh") / "server"
    comfy_host.write_tiny_checkpoint(base / "models")
    if host.is_modern:
        comfy_host.write_tiny_flow_checkpoint(base / "models")
    (base / "models" / "dyweight").mkdir(parents=True)
    with run_server(base, custom_nodes=[REPO], timeout=180) as server:
        yield server


def test_a_fresh_install_runs_a_learned_solver_at_nfe_5_and_says_which(fresh_install):
    """Empty models/dyweight: KSampler (DyWeight) and the stock `dyweight` run the shipped DSS table for ε
    models at NFE 5; two KSamplerAdvanced stages (a split schedule) run Adams–Bashforth on each slice."""
    server = fresh_install
    table = "dss-ddpm-dit-nfe5.safetensors (dss, shipped DSS, NFE 5)"

    steps = server.object_info()["KSamplerDyWeight"]["input"]["required"]["steps"]
    assert "5 (learned)" in steps[0] and "4" in steps[0] and steps[1]["default"] == "5 (learned)"

    entry = run_and_save(server, text_to_image(ksampler_dyweight(steps="5 (learned)")))
    assert entry["outputs"]["5"]["text"] == [f"DyWeight ran {table}"]
    assert entry["outputs"]["5"]["dyweight_phi"][0]["solver"] == "dss"
    run_and_save(server, text_to_image(ksampler_dyweight(steps="5")))  # a workflow saved before the marks

    run_and_save(server, text_to_image(stock_ksampler_dyweight(5, "karras")))
    log = server.log_tail(200_000)
    assert f"SD15, eps, 5 steps: using {table}" in log
    assert f"{table} runs on its own learned schedule instead of the scheduler's 5 steps" in log

    def advanced(start, end, latent, noise):
        return {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["1", 0], "add_noise": noise, "noise_seed": 3, "steps": 6, "cfg": 5.0,
            "sampler_name": "dyweight", "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": latent, "start_at_step": start, "end_at_step": end,
            "return_with_leftover_noise": "enable" if end < 6 else "disable"}}

    split = text_to_image(advanced(0, 3, ["4", 0], "enable"))
    split["6"]["inputs"]["samples"] = ["8", 0]
    split["8"] = advanced(3, 10000, ["5", 0], "disable")
    run_and_save(server, split)
    slices = "SD15, eps, 3 steps: Adams–Bashforth (a slice of a schedule no learned Φ was made for)"
    assert server.log_tail(200_000).count(slices) == 2


def test_a_fresh_install_runs_the_learned_flow_table_at_nfe_5_on_a_flow_model_and_says_which(fresh_install):
    """Empty models/dyweight, a rectified-flow checkpoint (SD3): KSampler (DyWeight) and the stock `dyweight`
    run the shipped DSS table searched for flow models (SiT) at NFE 5, and say so."""
    comfy_host.require_modern(what="a flow checkpoint on the server")
    server = fresh_install
    table = "dss-flow-sit-nfe5.safetensors (dss, shipped DSS, NFE 5)"

    def sd3(sampler_node):
        return text_to_image(sampler_node, comfy_host.TINY_FLOW_CHECKPOINT_NAME, "EmptySD3LatentImage")

    entry = run_and_save(server, sd3(ksampler_dyweight(steps="5 (learned)")))
    assert entry["outputs"]["5"]["text"] == [f"DyWeight ran {table}"]
    assert entry["outputs"]["5"]["dyweight_phi"][0]["solver"] == "dss"

    run_and_save(server, sd3(stock_ksampler_dyweight(5, "simple")))
    log = server.log_tail(200_000)
    assert f"SD3, flow, 5 steps: using {table}" in log
    assert f"{table} runs on its own learned schedule instead of the scheduler's 5 steps" in log
