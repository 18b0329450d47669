"""The front end's HTTP routes (nodes/routes.py) on a real aiohttp application, and the training state.

The routes need ComfyUI's ``folder_paths`` (the ``host`` fixture imports the real host; it skips with
the reason when there is none) and aiohttp (skipped with a reason when missing). The training-state
folding rule is also checked against the fixture that ``web/tests`` checks the JavaScript copy with.
"""

import asyncio
import dataclasses
import importlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from comfyui_dyweight.coefficients import Coefficients, adams_bashforth

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "web" / "tests" / "fixtures" / "training_events.json"


def _load_module(name):
    """A module of the pack's ``nodes`` package, imported from its file without the package (which needs a
    host); its relative imports of ``..coefficients`` still resolve to the installed package."""
    spec = importlib.util.spec_from_file_location(f"comfyui_dyweight.nodes._standalone_{name}",
                                                  REPO / "nodes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Φ JSON: the shape the JavaScript is tested with (web/tests/fixtures/phi_*.json) ---------------
def trained_example() -> Coefficients:
    """A made-up trained Φ (NFE 5, AFS, K=3, EDM grid): Adams–Bashforth moved by a fixed pattern."""
    phi = adams_bashforth(5, 3, afs=True, final_denoise=False, prediction="eps", model_family="SD15", cfg=7.5,
                          schedule={"kind": "edm", "rho": 7.0}, sigma_min=0.0292, sigma_max=14.6146,
                          training={"iterations": 800, "teacher": "dpmpp_2m", "teacher_steps": 40, "pairs": 64,
                                    "loss": 0.00213, "base_model": "sd-v1-5-pruned-emaonly.safetensors",
                                    "validation": {"rmse": 0.0123, "psnr": 31.4}})
    steps, order = phi.weights.shape
    n = torch.arange(steps, dtype=torch.float64)[:, None]
    k = torch.arange(order, dtype=torch.float64)[None, :]
    return dataclasses.replace(
        phi, weights=(phi.weights + 0.12 * torch.sin(1.3 * n + 2.1 * k + 0.4)).tril(),
        time_scale=1.0 + 0.045 * torch.cos(0.9 * torch.arange(steps, dtype=torch.float64) + 0.5))


def fixture_phis() -> dict:
    phi_json = _load_module("phi_json")
    shipped = REPO / "coefficients" / "presets" / "adams_bashforth" / "ab-nfe5.safetensors"
    dss = REPO / "coefficients" / "presets" / "dss" / "dss-ddpm-dit-nfe6.safetensors"
    return {
        "phi_ab_nfe5.json": phi_json.phi_to_json(Coefficients.load(shipped), "shipped/adams_bashforth/ab-nfe5.safetensors"),
        "phi_trained.json": phi_json.phi_to_json(trained_example(), "sd15/dyweight-sd15-nfe5.safetensors"),
        "phi_dss_ddpm_nfe6.json": phi_json.phi_to_json(Coefficients.load(dss), "shipped/dss/dss-ddpm-dit-nfe6.safetensors"),
    }


def test_js_fixtures_are_what_phi_to_json_returns():
    for name, doc in fixture_phis().items():
        path = FIXTURE.parent / name
        assert path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(doc, allow_nan=False)), (
            f"{path} is out of date: run python tests/test_routes.py")


# --- training state: no host needed ---------------------------------------------------------------
def _without_times(state):
    return {key: value for key, value in state.items() if key not in ("started", "updated", "age_s")}


def test_training_state_folding_matches_the_shared_fixture():
    events = _load_module("training_events")
    fixture = json.loads(FIXTURE.read_text())
    events.clear()
    for event in fixture["events"]:
        node = event.pop("node")
        events.publish(node, event)
    for node, expected in fixture["expected"].items():
        assert _without_times(events.training_state(node)) == expected, node
    assert [state["node"] for state in events.training_state()] == fixture["order"]


def test_publish_cleans_events_bounds_history_and_sends_to_the_server(monkeypatch):
    events = _load_module("training_events")
    events.clear()
    sent = []

    class FakePromptServer:  # stands in for ComfyUI's PromptServer.instance, whose send_sync is all we call
        def send_sync(self, event, data, sid=None):
            sent.append((event, json.loads(json.dumps(data, allow_nan=False))))

    monkeypatch.setattr(events, "prompt_server", lambda: FakePromptServer())
    for iteration in range(1, 2001):
        events.publish(7, {"kind": "train", "nfe": 4, "iteration": iteration, "iterations": 2000,
                           "loss": torch.tensor(1.0 / iteration), "eta_s": 2000 - iteration})
    events.publish(7, {"kind": "validation", "nfe": 4, "iteration": 2000, "val_rmse": float("nan")})
    events.publish(7, {"kind": "bogus"})  # dropped with a warning, never raises
    state = events.training_state("7")
    points = state["series"]["4"]["train"]
    assert len(points) <= events.MAX_POINTS and points[0] == [1, 1.0] and points[-1][0] == 2000
    assert state["status"] == "validation" and state["series"]["4"]["val"] == [] and state["age_s"] >= 0
    assert len(sent) == 2001 and sent[0][0] == "dyweight.training"
    assert sent[0][1] == {"node": "7", "kind": "train", "nfe": 4, "iteration": 1, "iterations": 2000,
                          "loss": 1.0, "eta_s": 1999}
    assert sent[-1][1]["val_rmse"] is None  # NaN never reaches the page (it is not JSON)


def test_publish_without_a_server_only_records():
    events = _load_module("training_events")
    events.clear()
    assert events.publish("3", {"kind": "error", "message": "out of memory"})["message"] == "out of memory"
    assert events.training_state("3")["status"] == "error" and events.training_state("nope") is None


# --- routes: real host + aiohttp ------------------------------------------------------------------
@pytest.fixture(scope="module")
def dw(host):
    if importlib.util.find_spec("aiohttp") is None:
        pytest.skip("aiohttp is not installed (it comes with ComfyUI's requirements)")
    return importlib.import_module("comfyui_dyweight.nodes")


@pytest.fixture
def user_folder(dw, tmp_path, monkeypatch):
    """models/dyweight/ is a fresh folder holding a trained Φ, a sub-folder Φ and a corrupt file."""
    import folder_paths

    folder = tmp_path / "dyweight"
    (folder / "sub").mkdir(parents=True)
    trained = adams_bashforth(4, 3, afs=True, prediction="eps", model_family="SD15", cfg=7.5,
                              schedule={"kind": "edm", "rho": 7.0}, sigma_min=0.002, sigma_max=80.0,
                              training={"iterations": 500, "teacher": "dpmpp_2m", "teacher_steps": 40,
                                        "validation": {"rmse": 0.0123}, "loss": float("nan")})
    trained = dataclasses.replace(trained, weights=trained.weights * 1.05,
                                  time_scale=torch.tensor([1.0, 0.97, 1.02, 1.01, 0.99]))
    trained.save(folder / "sd15-nfe4.safetensors")
    adams_bashforth(6).save(folder / "sub" / "ab6.safetensors")
    (folder / "broken.safetensors").write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    (tmp_path / "secret.safetensors").write_bytes(b"outside the folder")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "dyweight", ([str(folder)], {".safetensors"}))
    if hasattr(folder_paths, "filename_list_cache"):
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder


def _get(dw, *paths):
    """GET each path (raw, not normalised) from an aiohttp app holding the pack's route table."""
    from aiohttp.test_utils import TestClient, TestServer
    from yarl import URL

    routes = importlib.import_module("comfyui_dyweight.nodes.routes")

    async def run():
        results = []
        async with TestClient(TestServer(routes.make_app())) as client:
            for path in paths:
                url = URL(str(client.make_url("")).rstrip("/") + path, encoded=True)
                async with client.session.get(url) as response:
                    text = await response.text()
                    body = json.loads(text) if response.content_type == "application/json" else text
                    results.append((response.status, body))
        return results

    return asyncio.run(run())


def test_listing_holds_user_files_shipped_presets_and_errors(dw, user_folder):
    [(status, body)] = _get(dw, "/dyweight/coefficients")
    assert status == 200
    entries = {entry["name"]: entry for entry in body["coefficients"]}
    trained = entries["sd15-nfe4.safetensors"]
    assert (trained["nfe"], trained["order"], trained["afs"], trained["trained"]) == (4, 3, True, True)
    assert trained["model_family"] == "SD15" and "trained" in trained["summary"]
    assert entries["sub/ab6.safetensors"]["nfe"] == 6 and not entries["sub/ab6.safetensors"]["trained"]
    assert entries["shipped/adams_bashforth/ab-nfe5.safetensors"]["shipped"] is True
    assert entries["broken.safetensors"]["reason"] == "pickle" and "pickle" in entries["broken.safetensors"]["error"]
    assert list(entries)[0] == "broken.safetensors"  # user files first, then shipped ones


def test_one_file_as_phi_json(dw, user_folder):
    [(status, phi)] = _get(dw, "/dyweight/coefficients/sd15-nfe4.safetensors")
    assert status == 200
    assert (phi["name"], phi["nfe"], phi["steps"], phi["order"], phi["afs"]) == ("sd15-nfe4.safetensors", 4, 5, 3, True)
    assert phi["training"]["loss"] is None  # NaN became null: the body parsed as strict JSON
    assert phi["time_scale"] == pytest.approx([1.0, 0.97, 1.02, 1.01, 0.99])
    assert phi["weights"][2] == pytest.approx([x * 1.05 for x in (23 / 12, -16 / 12, 5 / 12)])
    assert phi["weights"][0][1:] == [0.0, 0.0]  # above the diagonal
    assert phi["weight_sums"] == pytest.approx([1.05] * 5)
    assert phi["reference_weights"][2] == pytest.approx([23 / 12, -16 / 12, 5 / 12])
    assert phi["reference_weights"][-1] == pytest.approx([23 / 12, -16 / 12, 5 / 12])  # EDM grid ends at σ_min
    assert phi["sigmas"] is None and phi["schedule"] == {"kind": "edm", "rho": 7.0} and phi["cfg"] == 7.5

    [(status, shipped), (sub_status, sub)] = _get(
        dw, "/dyweight/coefficients/shipped/adams_bashforth/ab-nfe5.safetensors",
        "/dyweight/coefficients/sub/ab6.safetensors")
    assert status == 200 and shipped["name"] == "shipped/adams_bashforth/ab-nfe5.safetensors"
    assert torch.allclose(torch.tensor(shipped["weights"]), torch.tensor(shipped["reference_weights"]))  # untrained = the reference
    assert shipped["reference_weights"][-1] == [1.0, 0.0, 0.0, 0.0]  # ComfyUI grids end at 0: last step Euler
    assert sub_status == 200 and sub["nfe"] == 6


@pytest.mark.parametrize("path, expected", [
    ("/dyweight/coefficients/nothing.safetensors", 404),
    ("/dyweight/coefficients/sub/../sd15-nfe4.safetensors", 400),
    ("/dyweight/coefficients/../../secret.safetensors", 400),
    ("/dyweight/coefficients/..%2F..%2Fsecret.safetensors", 400),
    ("/dyweight/coefficients/%2e%2e/%2e%2e/secret.safetensors", 400),
    ("/dyweight/coefficients/%2Fetc%2Fpasswd", 400),
    ("/dyweight/coefficients//etc/passwd", 400),
    ("/dyweight/coefficients/C:%5CWindows%5Cwin.ini", 400),
    ("/dyweight/coefficients/shipped/..%2F..%2Fpresets.py", 400),
])
def test_names_outside_the_folders_are_json_errors(dw, user_folder, path, expected):
    [(status, body)] = _get(dw, path)
    assert status == expected, (path, status, body)
    assert isinstance(body, dict) and body["error"], body


def test_traversal_names_are_refused_with_a_clear_message(dw, user_folder):
    [(status, body), (status2, body2), (status3, body3)] = _get(
        dw, "/dyweight/coefficients/..%2F..%2Fsecret.safetensors", "/dyweight/coefficients/%2Fetc%2Fpasswd",
        "/dyweight/coefficients/nothing.safetensors")
    assert status == 400 and "'..'" in body["error"]
    assert status2 == 400 and "absolute" in body2["error"]
    assert status3 == 404 and "is not a DyWeight coefficient file" in body3["error"]


def test_a_corrupt_file_is_422_with_the_loaders_message(dw, user_folder):
    [(status, body)] = _get(dw, "/dyweight/coefficients/broken.safetensors")
    assert status == 422 and body["reason"] == "pickle"
    assert "broken.safetensors" in body["error"] and "never unpickles" in body["error"]
    (user_folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    [(status, body)] = _get(dw, "/dyweight/coefficients/broken.safetensors")
    assert status == 422 and body["reason"] == "truncated"  # the cache noticed the new contents


def hostile_files() -> dict:
    """Files a user (or a download) may drop into models/dyweight/: each must be a 4xx, never a 500."""
    from test_fuzz_parsers import join, nested, split, valid_file

    def with_header(change):
        header, payload = split(valid_file())
        change(header)
        return join(header, payload)

    def with_document(change):
        def edit(header):
            document = json.loads(header["__metadata__"]["dyweight"])
            change(document)
            header["__metadata__"]["dyweight"] = json.dumps(document)
        return with_header(edit)

    header, payload = split(valid_file())
    return {
        "deep-metadata.safetensors": with_header(lambda h: h["__metadata__"].update(dyweight=nested(100_000))),
        "deep-training.safetensors": with_document(lambda d: d.update(training=json.loads(nested(600)))),
        "huge-number.safetensors": with_header(lambda h: h["__metadata__"].update(dyweight="[" + "9" * 5000 + "]")),
        "huge-header-length.safetensors": join(header, payload, prefix=2 ** 64 - 1),
        "not-utf8.safetensors": join(b'{"weights": "\xff\xfe"}', payload),
        "int64.safetensors": with_header(lambda h: h["weights"].update(dtype="I64")),
        "float8.safetensors": with_header(lambda h: h["time_scale"].update(dtype="F8_E4M3")),
        "zero-size.safetensors": with_header(lambda h: h["weights"].update(shape=[0, 3])),
        "negative-offsets.safetensors": with_header(lambda h: h["weights"].update(data_offsets=[-8, 64])),
        "overlapping-offsets.safetensors": with_header(
            lambda h: h["sigmas"].update(data_offsets=list(h["weights"]["data_offsets"]))),
        "string-offsets.safetensors": with_header(lambda h: h["weights"].update(data_offsets="ab")),
        "metadata-list.safetensors": with_header(lambda h: h.update(__metadata__=["dyweight"])),
        "flux-mu-nan.safetensors": with_document(lambda d: d.update(schedule={"kind": "flux", "mu": math.nan})),
        "random-bytes.safetensors": bytes(range(256)) * 3,
    }


def test_hostile_files_are_4xx_json_errors_never_500(dw, user_folder):
    for name, data in hostile_files().items():
        (user_folder / name).write_bytes(data)
    odd_record = adams_bashforth(5, training={"iterations": 3, "validation": {"rmse": "n/a"}, "loss": [None]})
    odd_record.save(user_folder / "odd-record.safetensors")
    names = list(hostile_files())
    responses = _get(dw, "/dyweight/coefficients", "/dyweight/coefficients/odd-record.safetensors",
                     *[f"/dyweight/coefficients/{name}" for name in names])
    (list_status, listing), (odd_status, odd) = responses[:2]
    assert list_status == 200 and odd_status == 200 and odd["summary"]
    entries = {entry["name"]: entry for entry in listing["coefficients"]}
    for name, (status, body) in zip(names, responses[2:]):
        assert status == 422, (name, status, body)
        assert isinstance(body, dict) and name in body["error"] and body["reason"], (name, body)
        assert entries[name]["error"] and entries[name]["reason"] == body["reason"], name


def test_preset_route_is_what_ksampler_dyweight_picks(dw, user_folder):
    [(status, phi), (status_sd15, sd15), (status_flow, flow), (status_eps_other, other)] = _get(
        dw, "/dyweight/preset?nfe=5", "/dyweight/preset?nfe=4&prediction=eps&family=SD15",
        "/dyweight/preset?nfe=7&prediction=flow", "/dyweight/preset?nfe=4&prediction=v&family=SD15")
    assert status == 200 and phi["name"] == "shipped/adams_bashforth/ab-nfe5.safetensors" and phi["nfe"] == 5
    assert phi["preset"]["source"] == "file"
    assert status_sd15 == 200 and sd15["name"] == "sd15-nfe4.safetensors" and sd15["model_family"] == "SD15"
    assert status_flow == 200 and flow["name"] == "shipped/dss/dss-flow-sit-nfe7.safetensors"  # the learned default
    assert status_eps_other == 200 and other["name"] == "shipped/adams_bashforth/ab-nfe4.safetensors"

    [(s1, _), (s2, missing), (s3, bad), (s4, _), (s5, _), (s6, builtin)] = _get(
        dw, "/dyweight/preset?nfe=abc", "/dyweight/preset", "/dyweight/preset?nfe=5&prediction=x0",
        "/dyweight/preset?nfe=0", "/dyweight/preset?nfe=5&family=../x", "/dyweight/preset?nfe=17")
    assert (s1, s2, s3, s4, s5) == (400, 400, 400, 400, 400) and "nfe" in missing["error"]
    assert "prediction" in bad["error"]
    assert s6 == 200 and builtin["name"] is None and builtin["preset"]["source"] == "builtin"
    assert builtin["steps"] == 17 and builtin["weights"] == builtin["reference_weights"]


def test_training_routes_after_publish(dw):
    events = importlib.import_module("comfyui_dyweight.nodes.training_events")
    events.clear()
    [(status, empty), (status_missing, missing)] = _get(dw, "/dyweight/training", "/dyweight/training/12")
    assert status == 200 and empty == {"jobs": []}
    assert status_missing == 404 and "12" in missing["error"]

    events.publish("12", {"kind": "teacher", "done": 8, "total": 8, "eta_s": 0})
    events.publish("12", {"kind": "train", "nfe": 5, "iteration": 50, "iterations": 100, "loss": 0.25, "eta_s": 9.5})
    events.publish("12", {"kind": "validation", "nfe": 5, "iteration": 50, "val_rmse": 0.4, "best": 0.4})
    events.publish(12, {"kind": "done", "nfe": 5, "table": [{"solver": "dyweight", "nfe": 5, "rmse": 0.4, "psnr": 28.0},
                                                            {"solver": "ipndm", "nfe": 5, "rmse": 0.9}]})
    events.publish("99", {"kind": "train", "nfe": 3, "iteration": 1, "iterations": 10, "loss": float("inf")})
    [(status, one), (status_all, every), (status_bad, bad)] = _get(
        dw, "/dyweight/training/12", "/dyweight/training", "/dyweight/training/%3Cscript%3E")
    assert status == 200 and one["node"] == "12" and one["status"] == "done"
    assert one["series"]["5"] == {"train": [[50, 0.25]], "val": [[50, 0.4]], "best": 0.4}
    assert one["table"][1] == {"solver": "ipndm", "nfe": 5, "rmse": 0.9}
    assert one["teacher"] == {"done": 8, "total": 8, "eta_s": 0} and one["age_s"] >= 0
    assert status_all == 200 and [job["node"] for job in every["jobs"]] == ["12", "99"]
    assert every["jobs"][1]["loss"] is None and every["jobs"][1]["series"]["3"]["train"] == []
    assert status_bad == 400
    events.clear()


def test_register_routes_adds_each_route_once(dw, monkeypatch):
    """Against the real PromptServer's route table type (an aiohttp RouteTableDef), without starting it."""
    import sys
    import types

    from aiohttp import web

    routes = importlib.import_module("comfyui_dyweight.nodes.routes")
    table = web.RouteTableDef()
    fake_module = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=types.SimpleNamespace(routes=table)))
    monkeypatch.setitem(sys.modules, "server", fake_module)
    assert routes.register_routes() and routes.register_routes()
    paths = sorted(route.path for route in table)
    assert paths == sorted(path for _, path, _ in routes.ROUTES)
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace())
    assert routes.register_routes() is False


def test_phi_json_is_strict_json_for_every_shipped_preset(dw):
    phi_json = importlib.import_module("comfyui_dyweight.nodes.phi_json")
    folders = importlib.import_module("comfyui_dyweight.nodes.folders")
    for name in folders.coefficient_names():
        if not name.startswith(folders.SHIPPED_PREFIX):
            continue
        doc = phi_json.phi_to_json(Coefficients.load(folders.resolve_coefficient_name(name)), name)
        text = json.dumps(doc, allow_nan=False)
        assert json.loads(text)["name"] == name
        assert len(doc["weights"]) == doc["steps"] == len(doc["time_scale"]) == len(doc["reference_weights"])
        assert all(math.isfinite(value) for value in doc["weight_sums"])


if __name__ == "__main__":  # regenerate the JavaScript tests' Φ fixtures
    for fixture_name, document in fixture_phis().items():
        (FIXTURE.parent / fixture_name).write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
        print(FIXTURE.parent / fixture_name)
