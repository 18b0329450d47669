"""``fetch-official`` and the Load node's button: the release files fetched from a loopback HTTP server.

Nothing here touches the network. A ``ThreadingHTTPServer`` on 127.0.0.1 serves release-format files
written by ``release_files.py`` (never the release's own files) at the release's paths, with a table of
their sizes and digests in place of the pinned one; it can truncate a response, answer with an error
status, or stall, and it records every request (and its ``Range`` header).
"""

import hashlib
import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from comfyui_dyweight.cli import main as cli_main
from comfyui_dyweight.coefficients import Coefficients
from comfyui_dyweight.release import fetch
from comfyui_dyweight.release.fetch import FetchError, fetch_official, official_table
from reference_tables import compact_weights, load_tables
from release_files import (FIXTURE_OUTPUTS as OUTPUTS, FLUX_PATH, SD_PATHS, fixture_release, pack_with_table,
                           release_server, table_for, write_flux, write_table_snapshot)

@pytest.fixture
def release(tmp_path):
    """Two SD1.5 snapshots and a FLUX checkpoint at the release's paths: ``(files, rows per path)``."""
    marker = tmp_path / "MARKER-code-ran"
    yield fixture_release(tmp_path / "release", marker)
    assert not marker.exists(), "code embedded in a release file was executed"


def converted(out: Path) -> list:
    return sorted(path.name for path in out.glob("*.safetensors"))


def check_outputs(out: Path, files: dict, rows: dict) -> None:
    """Each output is the conversion of its source: digest recorded, weights in the compact form."""
    assert converted(out) == OUTPUTS
    for name, path in zip(OUTPUTS, files):
        phi = Coefficients.load(out / name)
        assert phi.training["source_sha256"] == hashlib.sha256(files[path]).hexdigest()
        full_rows, window = rows[path]
        assert phi.weights.tolist() == compact_weights(torch.tensor(full_rows).tolist(), window).tolist(), name
    assert not (out / ".dyweight-state").exists()  # the downloads are gone once converted


# --- the fetch ------------------------------------------------------------------------------------------

def test_fetch_downloads_checks_and_converts_then_finds_everything_present(tmp_path, release):
    files, rows = release
    out = tmp_path / "models" / "dyweight"
    events = []
    with release_server(files) as server:
        result = fetch_official(out, base_url=server.url, table=table_for(files), progress=events.append)
        assert [path.name for path in result.written] == OUTPUTS and result.downloaded == list(files)
        assert server.requests == [(path, None) for path in files]  # one plain GET per file
        check_outputs(out, files, rows)
        last = {event["file"]: event for event in events if event["kind"] == "download"}
        assert {path: (event["done"], event["total"]) for path, event in last.items()} == {
            path: (len(data), len(data)) for path, data in files.items()}
        assert events[-1] == {"kind": "done", "written": OUTPUTS, "present": []}

        stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
        server.requests.clear()
        again = fetch_official(out, base_url=server.url, table=table_for(files))
        assert server.requests == []  # nothing downloaded
        assert again.written == [] and again.downloaded == [] and [path.name for path in again.present] == OUTPUTS
        assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == stamps


def test_a_wrong_digest_is_refused_with_nothing_written(tmp_path, release):
    files, _ = release
    out = tmp_path / "out"
    table = table_for(files)
    with release_server({**files, SD_PATHS[1]: files[SD_PATHS[1]][:-1] + b"\x00"}) as server:  # same size
        with pytest.raises(FetchError, match="SHA-256") as caught:
            fetch_official(out, base_url=server.url, table=table)
    error = caught.value
    assert SD_PATHS[1] in error.problem and table.files[1].sha256 in error.problem and "removed" in error.problem
    assert converted(out) == []
    staged = out / ".dyweight-state" / "release-620534e"
    assert not list(staged.rglob("*.partial")) and not (staged / SD_PATHS[1]).exists()
    assert (staged / SD_PATHS[0]).is_file()  # the good one waits for the next run


def test_a_truncated_download_is_kept_and_the_next_run_continues_it(tmp_path, release):
    files, rows = release
    out = tmp_path / "out"
    with release_server(files) as server:
        server.truncate[SD_PATHS[0]] = 1000
        with pytest.raises(FetchError, match="truncated download, 1000 of") as caught:
            fetch_official(out, base_url=server.url, table=table_for(files))
        assert "run the fetch again" in caught.value.problem and converted(out) == []
        partial = out / ".dyweight-state" / "release-620534e" / (SD_PATHS[0] + ".partial")
        assert partial.stat().st_size == 1000

        server.truncate.clear()
        server.requests.clear()
        fetch_official(out, base_url=server.url, table=table_for(files))
        assert server.requests[0] == (SD_PATHS[0], "bytes=1000-")  # resumed, not restarted
    check_outputs(out, files, rows)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, release, monkeypatch):
    files, rows = release
    out = tmp_path / "out"
    monkeypatch.setattr(fetch, "CHUNK", 512)

    def interrupt(event):  # Ctrl-C in the middle of the second file
        if event["kind"] == "download" and event["file"] == SD_PATHS[1] and event["done"] >= 1024:
            raise KeyboardInterrupt

    with release_server(files) as server:
        with pytest.raises(KeyboardInterrupt):
            fetch_official(out, base_url=server.url, table=table_for(files), progress=interrupt)
        assert converted(out) == []
        kept = (out / ".dyweight-state" / "release-620534e" / (SD_PATHS[1] + ".partial")).stat().st_size
        assert 1024 <= kept < len(files[SD_PATHS[1]])
        server.requests.clear()
        result = fetch_official(out, base_url=server.url, table=table_for(files))
        assert server.requests == [(SD_PATHS[1], f"bytes={kept}-"), (FLUX_PATH, None)]  # the first file is kept
        assert result.downloaded == [SD_PATHS[1], FLUX_PATH]
    check_outputs(out, files, rows)


def test_a_server_that_ignores_range_sends_the_whole_file_again(tmp_path, release):
    files, rows = release
    out = tmp_path / "out"
    with release_server(files) as server:
        server.truncate[FLUX_PATH] = 700
        with pytest.raises(FetchError, match="truncated"):
            fetch_official(out, base_url=server.url, table=table_for(files))
        server.truncate.clear()
        server.ranges = False
        fetch_official(out, base_url=server.url, table=table_for(files))
    check_outputs(out, files, rows)


def test_a_server_error_names_the_status_and_the_manual_steps(tmp_path, release):
    files, _ = release
    out = tmp_path / "out"
    table = table_for(files)
    with release_server(files) as server:
        server.status[FLUX_PATH] = 503
        with pytest.raises(FetchError, match="HTTP 503") as caught:
            fetch_official(out, base_url=server.url, table=table)
    message = str(caught.value)
    assert f"{server.url}/{FLUX_PATH}" in message
    assert "python -m comfyui_dyweight import" in message and str(out) in message
    assert converted(out) == []


def test_offline_gives_the_manual_steps(tmp_path, release):
    files, _ = release
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "out"
    table = table_for(files)
    with pytest.raises(FetchError, match="offline or blocked") as caught:
        fetch_official(out, base_url=closed, table=table)
    manual = caught.value.manual
    for entry in table.files:
        assert f"{closed}/{entry.path}" in manual and f"DyWeight/{entry.path}" in manual
    assert f"git -C DyWeight checkout {table.commit}" in manual
    assert "python -m comfyui_dyweight import" in manual and f"--out {out}" in manual
    assert str(out / ".dyweight-state" / "release-620534e") in manual
    assert converted(out) == []


def test_files_put_in_place_by_hand_are_converted_offline(tmp_path, release):
    files, rows = release
    out = tmp_path / "out"
    table = table_for(files)
    for path, data in files.items():  # the manual steps' "put them in …" route
        target = fetch.staging_folder(out, table) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    result = fetch_official(out, base_url="http://127.0.0.1:9", table=table)  # never contacted
    assert result.downloaded == []
    check_outputs(out, files, rows)


def test_the_published_tables_come_out_as_published(tmp_path):
    """Release-format files holding the release's own numbers, at the pinned paths: the converted weights and
    time scales are the published ones (skipped without the reference tables)."""
    tables = load_tables()
    marker = tmp_path / "MARKER-code-ran"
    files, expected = {}, {}
    for entry in official_table().files:
        if entry.path.startswith("exps/"):
            table = tables[entry.path.split("/")[1]]
            source = write_table_snapshot(tmp_path / "release" / entry.path, marker, table)
            expected[entry.path] = (table["W"], table["max_history_steps"], table["t_scale"])
        else:
            table = tables["flux_" + Path(entry.path).stem.split("_")[-1]]
            source = write_flux(tmp_path / "release" / entry.path, table["W"], table["t_scales"], table["window_size"])
            expected[entry.path] = (table["W"], table["window_size"], table["t_scales"])
        files[entry.path] = source.read_bytes()
    out = tmp_path / "out"
    with release_server(files) as server:
        written = fetch_official(out, base_url=server.url, table=table_for(files)).written
    assert len(written) == 7 and not marker.exists()
    for path, (entry_path, (full_rows, window, scales)) in zip(written, expected.items()):
        phi = Coefficients.load(path)
        assert torch.allclose(phi.weights.double(), compact_weights(full_rows, window), atol=1e-7), path
        assert phi.time_scale.tolist()[-len(scales):] == pytest.approx(scales, abs=1e-7), path
        assert phi.model_family == ("SD15" if entry_path.startswith("exps/") else "Flux")


def test_the_pinned_table():
    table = official_table()
    assert table.repository == "Westlake-AGI-Lab/DyWeight" and len(table.commit) == 40
    assert table.commit.startswith("620534e")
    assert table.base_url == f"https://raw.githubusercontent.com/Westlake-AGI-Lab/DyWeight/{table.commit}"
    assert [entry.path for entry in table.files] == [
        f"exps/000{run}-mscoco-nfe{nfe}/network-snapshot-000005.pkl" for run, nfe in ((36, 8), (37, 12), (38, 16), (39, 20))
    ] + [f"dyweight_flux/checkpoints/dyweight_nfe{nfe}.pt" for nfe in (3, 5, 7)]
    for entry in table.files:
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and 1000 < entry.size < 100_000
    assert table.url(table.files[0]) == f"{table.base_url}/{table.files[0].path}"


def test_the_base_url_variable_and_a_bad_base_url(tmp_path, release, monkeypatch):
    files, rows = release
    with release_server(files) as server:
        monkeypatch.setenv(fetch.BASE_URL_VARIABLE, server.url + "/")
        fetch_official(tmp_path / "out", table=table_for(files))
        assert len(server.requests) == 3
    check_outputs(tmp_path / "out", files, rows)
    with pytest.raises(FetchError, match="https://"):
        fetch_official(tmp_path / "other", base_url="file:///etc", table=table_for(files))


# --- the command line -----------------------------------------------------------------------------------

def test_the_command(tmp_path, release, monkeypatch, capsys):
    files, rows = release
    monkeypatch.setattr(fetch, "official_table", lambda: table_for(files))
    out = tmp_path / "ComfyUI" / "models" / "dyweight"
    with release_server(files) as server:
        server.status[FLUX_PATH] = 500
        with monkeypatch.context() as without_tqdm:
            without_tqdm.setitem(sys.modules, "tqdm.auto", None)  # tqdm is optional: plain lines then
            assert cli_main(["fetch-official", "--out", str(out), "--base-url", server.url]) == 1
        error = capsys.readouterr().err
        assert f"downloading [1/3] {SD_PATHS[0]} ({len(files[SD_PATHS[0]])} bytes)" in error
        assert "HTTP 500" in error and "To install them by hand" in error and "Traceback" not in error

        server.status.clear()
        monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "ComfyUI"))  # --out defaults to its models/dyweight
        assert cli_main(["fetch-official", "--base-url", server.url]) == 0
        printed = capsys.readouterr()
        assert printed.out.splitlines()[:3] == [str(out / name) for name in OUTPUTS]
        assert "wrote 3 coefficient files" in printed.out and FLUX_PATH in printed.err  # the progress
        check_outputs(out, files, rows)

        assert cli_main(["fetch-official", "--out", str(out), "--base-url", server.url]) == 0
        assert "3 already there" in capsys.readouterr().out
    monkeypatch.delenv("COMFYUI_PATH")
    assert cli_main(["fetch-official"]) == 2 and "--out" in capsys.readouterr().err


# --- the button's route on the real server --------------------------------------------------------------

def test_the_button_route_fetches_and_the_load_node_lists_the_files(host, tmp_path, release):
    from comfy_server import run_server

    files, _ = release
    base = tmp_path / "server"
    with release_server(files) as release_site:
        release_site.delay = 0.1  # slow enough for the page to see the bytes arrive
        env = {**os.environ, fetch.BASE_URL_VARIABLE: release_site.url}
        with run_server(base, custom_nodes=[pack_with_table(tmp_path, table_for(files))], env=env) as server:
            folder = base / "models" / "dyweight"
            before = folder.stat()  # ComfyUI caches the list of a folder until its modification time changes
            listed = server.object_info("DyWeightLoadCoefficients")["DyWeightLoadCoefficients"]["input"]["required"]
            assert not set(OUTPUTS) & set(listed["coefficients"][0])
            assert server.get_json("/dyweight/fetch-official")["status"] == "idle"

            status, started = server._request("POST", "/dyweight/fetch-official", {})
            assert status == 202 and started["status"] == "running", started
            assert Path(started["folder"]).resolve() == (base / "models" / "dyweight").resolve()
            status, busy = server._request("POST", "/dyweight/fetch-official", {})
            assert status == 409 and busy["state"]["status"] == "running"

            seen = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = server.get_json("/dyweight/fetch-official")
                seen.append(state)
                if state["status"] != "running":
                    break
                time.sleep(0.05)
            assert state["status"] == "done", (state, server.log_tail())
            assert state["written"] == OUTPUTS
            progress = [s for s in seen if s.get("phase") == "download"]
            assert progress and any(0 < s["done"] < s["total"] for s in progress), seen
            assert {s["count"] for s in progress} == {3}

            # as on a file system whose clock did not tick meanwhile: only the fetch's own refresh can help
            os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
            listed = server.object_info("DyWeightLoadCoefficients")["DyWeightLoadCoefficients"]["input"]["required"]
            assert set(OUTPUTS) <= set(listed["coefficients"][0])  # no restart
            entries = {entry["name"]: entry for entry in server.get_json("/dyweight/coefficients")["coefficients"]}
            assert entries[OUTPUTS[2]]["model_family"] == "Flux" and entries[OUTPUTS[0]]["cfg"] == 7.5

            status, again = server._request("POST", "/dyweight/fetch-official", {})
            assert status == 202
            while (state := server.get_json("/dyweight/fetch-official"))["status"] == "running":
                time.sleep(0.05)
            assert state["status"] == "done" and state["written"] == [] and state["present"] == OUTPUTS
    assert len(release_site.requests) == 3  # the second press downloaded nothing
