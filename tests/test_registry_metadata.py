"""The Comfy Registry metadata: pyproject.toml's [project] and [tool.comfy], the icon and the publish workflow.

Checked against the registry's documented rules (docs.comfy.org/registry/specifications and /publishing)
and, where the host has it, parsed by the host's own ``comfy_config`` (the registry's pydantic types, kept
in step with comfy-cli's, which publishes).
"""

import importlib
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

import comfy_host

if sys.version_info >= (3, 11):
    import tomllib
else:  # the `test` extra installs tomli on Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?\d+\.\d+\.\d+(?:-[A-Za-z0-9]+)?$")


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_project_fields(pyproject):
    project = pyproject["project"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name), f"{name}: no consecutive special characters"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry wants a X.Y.Z version"
    version_module = importlib.import_module("comfyui_dyweight.version")
    assert project["version"] == version_module.__version__, "keep version.py equal to pyproject.toml"
    assert (REPO / project["license"]["file"]).is_file()
    assert project["description"]


def test_urls(pyproject):
    urls = pyproject["project"]["urls"]
    repository = urls["Repository"]
    assert repository == "https://github.com/comfyui-dyweight/ComfyUI-DyWeight"
    assert urls["Documentation"].startswith(repository)
    assert urls["Bug Tracker"] == urls["Issues"] == repository + "/issues"


def test_classifiers(pyproject):
    classifiers = pyproject["project"]["classifiers"]
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert systems and all(system.startswith(OS_PREFIXES) for system in systems), systems
    assert accelerators and set(accelerators) <= ACCELERATORS, accelerators


def test_tool_comfy(pyproject):
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert all(VERSION_PART.match(part.strip()) for part in comfy["requires-comfyui"].split(",")), \
        comfy["requires-comfyui"]


def test_icon_is_a_small_square_file_of_this_repository(pyproject):
    """Icon: a raw URL of a file on main; SVG, PNG, JPG or GIF, square, at most 400 × 400 px."""
    owner_repo = pyproject["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    icon_url = pyproject["tool"]["comfy"]["Icon"]
    assert icon_url.startswith(prefix), icon_url
    icon = REPO / icon_url.removeprefix(prefix)
    assert icon.suffix in (".svg", ".png", ".jpg", ".gif") and icon.is_file(), icon
    assert icon.stat().st_size < 20_000, "keep the icon small"
    svg = ElementTree.parse(icon).getroot()
    width, height = float(svg.get("width")), float(svg.get("height"))
    view_box = [float(v) for v in svg.get("viewBox").split()]
    assert width == height <= 400 and view_box[2] == view_box[3], (width, height, view_box)


def test_publish_workflow():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "publish.yml").read_text(encoding="utf-8"))
    trigger = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert trigger["push"] == {"branches": ["main"], "paths": ["pyproject.toml"]}
    steps = workflow["jobs"]["publish-node"]["steps"]
    publish = [step for step in steps if step.get("uses", "").startswith("Comfy-Org/publish-node-action@")]
    assert len(publish) == 1, steps
    assert publish[0]["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"


def test_the_hosts_registry_parser_reads_it(host):
    """ComfyUI's own copy of the registry types (comfy_config) reads every field we set."""
    try:
        config_parser = importlib.import_module("comfy_config.config_parser")
    except ImportError as error:
        comfy_host._skip(f"the ComfyUI at {host.path} has no comfy_config ({error}); it predates the registry "
                         "types")
    config = config_parser.extract_node_configuration(str(REPO))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert config.project.name == pyproject["project"]["name"]
    assert config.project.version == pyproject["project"]["version"]
    assert config.project.urls.repository == pyproject["project"]["urls"]["Repository"]
    assert config.project.urls.issues.endswith("/issues")
    assert config.project.supported_os == ["OS Independent"]
    assert set(config.project.supported_accelerators) == {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm",
                                                          "GPU :: Intel Arc", "GPU :: Apple Metal"}
    assert config.project.supported_comfyui_version == pyproject["tool"]["comfy"]["requires-comfyui"]
    assert config.tool_comfy.publisher_id == "dyweight"
    assert config.tool_comfy.icon == pyproject["tool"]["comfy"]["Icon"]
