"""HTTP routes for the front end (``web/dyweight.js``), all JSON, all under ``/dyweight/``.

=====================================================  ============================================
``GET /dyweight/coefficients``                         every selectable coefficient file + summary
``GET /dyweight/coefficients/{name}``                  one file as Φ JSON (``name`` may hold ``/``)
``GET /dyweight/preset?nfe=5[&prediction=eps&family=SD15]``  the Φ KSampler (DyWeight) would pick
``GET /dyweight/training``                             the state of every training node
``GET /dyweight/training/{node}``                      the state of one training node
``POST /dyweight/fetch-official``                      start fetching the paper's coefficients (202; 409
                                                       while a fetch runs)
``GET /dyweight/fetch-official``                       that fetch's progress and outcome
=====================================================  ============================================

ComfyUI serves each route under ``/api`` as well. A name resolves only if it is one of the listed
names (``folders.resolve_coefficient_name``): anything else — a missing file, ``..``, an absolute
path — is a 4xx JSON ``{"error": ...}``; an unreadable file is a 422 carrying the loader's message.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from ..coefficients import Coefficients, CoefficientFileError
from ..coefficients.phi import PREDICTIONS
from . import folders
from .constants import LOG
from .official_fetch import fetch_state, start_fetch
from .phi_json import phi_to_json, to_strict_json
from .training_events import prompt_server, training_state

PREFIX = "/dyweight"
MAX_NFE = 1000
_FAMILY = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_NODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=False)


def _web():
    """aiohttp.web, imported when a route is used (ComfyUI always has it; other importers need not)."""
    from aiohttp import web
    return web


def _json(value, status: int = 200):
    return _web().json_response(to_strict_json(value), status=status, dumps=_dumps)


def _error(status: int, message: str, **extra):
    return _json({"error": message, **extra}, status=status)


def _json_errors(handler):
    """Turn an unexpected exception into a logged JSON 500 instead of aiohttp's HTML page."""
    @functools.wraps(handler)
    async def wrapped(request):
        try:
            return await handler(request)
        except _web().HTTPException:
            raise
        except Exception as error:  # noqa: BLE001
            LOG.exception("DyWeight: %s %s failed", request.method, request.path)
            return _error(500, f"DyWeight: {type(error).__name__}: {error}")
    return wrapped


def _trained(phi: Coefficients) -> bool:
    return bool(phi.training.get("iterations"))


def describe(name: str) -> dict:
    """One entry of the listing: the facts of a file, or its error."""
    try:
        phi = folders.preset_registry().read(folders.resolve_coefficient_name(name))
    except (ValueError, CoefficientFileError) as error:  # CoefficientFileError is a ValueError too
        return {"name": name, "error": str(error), "reason": getattr(error, "reason", "missing")}
    return {
        "name": name, "nfe": phi.nfe, "steps": phi.steps, "order": phi.order, "afs": phi.afs,
        "prediction": phi.prediction, "model_family": phi.model_family, "cfg": phi.cfg,
        "shipped": name.startswith(folders.SHIPPED_PREFIX), "trained": _trained(phi), "summary": phi.summary(),
    }


def name_problem(name: str):
    """Why ``name`` can never be a coefficient name (traversal, absolute path, …), or ``None``."""
    if not name:
        return "a coefficient file name is required"
    if len(name) > 1024 or "\x00" in name or "\\" in name:
        return "this is not a valid coefficient file name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute paths are not allowed: use a name from GET /dyweight/coefficients"
    if any(part in ("..", ".") for part in name.split("/")):
        return "'..' and '.' are not allowed in a coefficient file name: use a name from GET /dyweight/coefficients"
    return None


def preset_name(path) -> "str | None":
    """The listed name of a preset's file (``None`` for the built-in fallback)."""
    if path is None:
        return None
    path = Path(path).resolve()
    roots = [(folders.SHIPPED_PREFIX, Path(folders.SHIPPED_DIR).resolve())]
    roots += [("", Path(folder).resolve()) for folder in folders.user_folders()]
    for prefix, root in roots:
        if path.is_relative_to(root):
            return prefix + path.relative_to(root).as_posix()
    return None


# --- handlers ----------------------------------------------------------------------------------------
@_json_errors
async def list_coefficients(request):
    return _json({"coefficients": [describe(name) for name in folders.coefficient_names()]})


@_json_errors
async def get_coefficients(request):
    name = request.match_info.get("name", "")
    problem = name_problem(name)
    if problem:
        return _error(400, problem, name=name)
    try:
        path = folders.resolve_coefficient_name(name)
    except ValueError as error:
        return _error(404, str(error), name=name)
    try:
        phi = folders.preset_registry().read(path)
    except CoefficientFileError as error:
        return _error(422, str(error), name=name, reason=error.reason)
    return _json(phi_to_json(phi, name))


@_json_errors
async def get_preset(request):
    query = request.query
    try:
        nfe = int(query.get("nfe", ""))
    except ValueError:
        return _error(400, f"nfe must be a whole number, got {query.get('nfe')!r}")
    if not 1 <= nfe <= MAX_NFE:
        return _error(400, f"nfe must be between 1 and {MAX_NFE}, got {nfe}")
    prediction = query.get("prediction") or None
    if prediction is not None and prediction not in PREDICTIONS:
        return _error(400, f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    family = query.get("family") or None
    if family is not None and not _FAMILY.match(family):
        return _error(400, f"family must be a model config name such as SD15, got {family!r}")
    preset = folders.preset_registry().find(family, prediction, nfe)
    result = phi_to_json(preset.coefficients, preset_name(preset.path))
    result["preset"] = {"label": preset.label if preset.path is None else preset_name(preset.path),
                        "source": "builtin" if preset.path is None else "file",
                        "nfe": nfe, "prediction": prediction, "family": family}
    return _json(result)


@_json_errors
async def list_training(request):
    return _json({"jobs": training_state()})


@_json_errors
async def get_training(request):
    node = request.match_info.get("node", "")
    if not _NODE.match(node):
        return _error(400, f"not a node id: {node!r}"[:200])
    state = training_state(node)
    if state is None:
        return _error(404, f"no DyWeight training has reported for node {node} since the server started", node=node)
    return _json(state)


@_json_errors
async def post_fetch_official(request):
    started, state = start_fetch()
    if not started:
        return _error(409, "the paper's coefficients are being fetched already", state=state)
    return _json(state, status=202)


@_json_errors
async def get_fetch_official(request):
    return _json(fetch_state())


ROUTES = (
    ("GET", PREFIX + "/coefficients", list_coefficients),
    ("GET", PREFIX + "/coefficients/{name:.+}", get_coefficients),
    ("GET", PREFIX + "/preset", get_preset),
    ("GET", PREFIX + "/training", list_training),
    ("GET", PREFIX + "/training/{node}", get_training),
    ("POST", PREFIX + "/fetch-official", post_fetch_official),
    ("GET", PREFIX + "/fetch-official", get_fetch_official),
)


def add_routes(routes) -> None:
    """Add the routes to an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.instance.routes``)."""
    for method, path, handler in ROUTES:
        routes.route(method, path)(handler)


def make_app():
    """A bare aiohttp application with just these routes (tests)."""
    web = _web()
    routes = web.RouteTableDef()
    add_routes(routes)
    app = web.Application()
    app.add_routes(routes)
    return app


def register_routes() -> bool:
    """Add the routes to the running ComfyUI server (idempotent); ``False`` when there is no server."""
    routes = getattr(prompt_server(), "routes", None)
    if routes is None:
        return False
    taken = {(getattr(route, "method", None), getattr(route, "path", None)) for route in routes}
    if all((method, path) in taken for method, path, _ in ROUTES):
        return True
    for method, path, handler in ROUTES:
        if (method, path) not in taken:
            routes.route(method, path)(handler)
    return True
