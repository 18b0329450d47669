"""Every node has a help page, ``web/docs/<NodeId>.md``, that the front end shows in its node help panel.

The front end asks for ``/extensions/<pack folder>/docs/<NodeId>/<locale>.md`` first and then for
``/extensions/<pack folder>/docs/<NodeId>.md`` (tests/test_browser.py checks that it is served and shown).
Each page must name the node as the menu does and list exactly the node's inputs and outputs, read from
its INPUT_TYPES / RETURN_TYPES, so the pages cannot drift from the code unnoticed.
"""

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "web" / "docs"
SECTIONS = ("## Inputs", "## Outputs", "## Example")


@pytest.fixture(scope="module")
def pack_nodes(host):
    return importlib.import_module("comfyui_dyweight.nodes")


def section(text: str, heading: str) -> str:
    start = text.index(heading) + len(heading)
    following = text.find("\n## ", start)
    return text[start:] if following < 0 else text[start:following]


def table_names(block: str) -> set:
    """The names in the first column of a markdown table: `a` or `a`, `b` (code spans)."""
    names = set()
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[0].startswith("`"):
            names.update(re.findall(r"`([^`]+)`", cells[0]))
    return names


def documented_inputs(node_class) -> set:
    spec = node_class.INPUT_TYPES()
    return set(spec.get("required", {})) | set(spec.get("optional", {}))


def documented_outputs(node_class) -> set:
    return set(getattr(node_class, "RETURN_NAMES", None) or node_class.RETURN_TYPES)


def test_every_node_and_only_those_have_a_page(pack_nodes):
    pages = {path.stem for path in DOCS.glob("*.md")}
    assert pages == set(pack_nodes.NODE_CLASS_MAPPINGS), "web/docs/ must hold one <NodeId>.md per node"


@pytest.mark.parametrize("node_id", ["KSamplerDyWeight", "DyWeightSampler", "DyWeightSigmas",
                                     "DyWeightLoadCoefficients", "DyWeightTrain"])
def test_page_matches_the_node(pack_nodes, node_id):
    node_class = pack_nodes.NODE_CLASS_MAPPINGS[node_id]
    text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# {pack_nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]}"
    for heading in SECTIONS:
        assert f"\n{heading}\n" in text, f"{node_id}.md lacks '{heading}'"
    assert table_names(section(text, "## Inputs")) == documented_inputs(node_class)
    assert table_names(section(text, "## Outputs")) == documented_outputs(node_class)
    assert len(section(text, "## Example").split()) >= 20, "the example should describe a workflow"
