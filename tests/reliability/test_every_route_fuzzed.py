"""Odd values at every parameter of every route, enumerated from the app: no 5xx, ever.

The routes come from ``app.routes``; their path, query and header parameters from each
route's dependencies; their JSON (or form) fields from the request body's schema, walked
down to nested fields and list items. For every route hypothesis draws one parameter or
field and an odd value for it — a lone surrogate, ``²``, 5,000 digits, ``10**400``, NaN,
nesting a thousand deep, a list of 100,000 items, the wrong type — and sends the request,
otherwise valid, as the account that owns everything the path names. Whatever comes back
must be an answer below 500: a 5xx (what the probe found for 19 inputs) fails the test.

In process on the in-memory backend (the server's code, without the network); the fuzzed
values are drawn deterministically, so a failure reproduces.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from control_harness import in_process_app, payload, prepare_root, route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.backends.fake import FakeBackend
from tunery.db import HubEntry, Run, new_id, now
from tunery.scheduler.scheduler import tick
from tunery.settings import NodeSettings, Settings

AREA = "odd values at every route's parameters and fields (no 5xx)"
CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}\n'
MAX_FIELD_DEPTH = 4


PLACE = "\x00big\x00"
"""Where a ``Big`` value goes in a body, until the body is JSON text."""


def as_json(body: Any, odd: Any) -> str:
    """``body`` as JSON text (NaN and lone surrogates as a client may send them), with a
    ``Big`` value in its place."""
    text = json.dumps(body, allow_nan=True)
    return text.replace(json.dumps(PLACE), odd.json()) if isinstance(odd, Big) else text


def as_text(odd: Any) -> str:
    """``odd`` as a path, query or header value."""
    if isinstance(odd, str):
        return odd
    return (odd.json() if isinstance(odd, Big) else json.dumps(odd, allow_nan=True))[:5000]


@dataclass(frozen=True)
class Big:
    """A value too deep or too long for hypothesis to print: built only when sent."""

    kind: str
    size: int

    def json(self) -> str:
        if self.kind == "deep":
            return "[" * self.size + "1" + "]" * self.size
        if self.kind == "list":
            return "[" + ", ".join(['"x"'] * self.size) + "]"
        return "{" + ", ".join(f'"k{i}": {i}' for i in range(self.size)) + "}"


KNOWN_ODD: list[Any] = [
    # Text that passes str.isdigit() but not int(), numbers past SQLite's and a double's range
    "",
    "²",
    "٣٤",
    "9" * 5000,
    "-1",
    "0",
    "1e3",
    "0x1f",
    str(2**63),
    str(2**64),
    "ftevent-" + "9" * 30,
    "ftevent-²",
    "ftckpt-x-" + "9" * 30,
    # Text no encoder takes, control characters, paths, URLs that do not parse
    "\ud800",
    "a\x00b",
    "../../etc/passwd",
    "http://[::1",
    "x" * 10_000,
    # Every JSON type where another is expected, at its extremes
    None,
    True,
    0,
    -1,
    2**63,
    10**400,
    -(10**400),
    1e308,
    float("nan"),
    float("inf"),
    [],
    {},
    [None],
    {"": None},
    ["x"],
    {"x": "y"},
    # Nesting and length past any limit
    Big("deep", 100),
    Big("deep", 900),
    Big("deep", 5000),
    Big("list", 100_000),
    Big("dict", 10_000),
]
"""Values the probe (and its kin) used; every parameter and field gets each of them."""
DRAWN_ODD = st.one_of(
    st.sampled_from(KNOWN_ODD),
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    ),
)


@dataclass
class Owned:
    """What the fuzzing account owns, by path parameter name."""

    ids: dict[str, str] = field(default_factory=dict)
    attempt_token: str = ""


@dataclass(frozen=True)
class Target:
    """One route and the parameters and fields it takes."""

    method: str
    path: str
    path_params: tuple[str, ...]
    query: tuple[str, ...]
    headers: tuple[str, ...]
    body: str | None  # "json" or "form"
    fields: tuple[tuple[Any, ...], ...]
    streams: bool

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def json_schema_fields(schema: dict[str, Any], defs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every field path in ``schema``: ``("training", "epochs")``, ``("messages", 0, "role")``."""
    found: list[tuple[Any, ...]] = []

    def walk(node: dict[str, Any], at: tuple[Any, ...]) -> None:
        if len(at) > MAX_FIELD_DEPTH:
            return
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        for branch in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
            walk(branch, at)
        for name, inner in node.get("properties", {}).items():
            found.append((*at, name))
            walk(inner, (*at, name))
        if isinstance(node.get("items"), dict):
            found.append((*at, 0))
            walk(node["items"], (*at, 0))

    walk(schema, ())
    return sorted(set(found), key=str)


def parameters(dependant: Any, kind: str) -> list[str]:
    """The names (aliases) of a route's ``kind`` parameters, its dependencies' included."""
    names = [param.alias for param in getattr(dependant, f"{kind}_params")]
    for inner in dependant.dependencies:
        names += parameters(inner, kind)
    return sorted(set(names))


def targets(app: Any) -> list[Target]:
    schema = app.openapi()
    defs = schema.get("components", {}).get("schemas", {})
    found = []
    for route in route_contexts(app):
        if not hasattr(route, "dependant"):  # the static files mount
            continue
        for method in sorted(route.methods - {"HEAD"}):
            documented = schema["paths"].get(route.path, {}).get(method.lower(), {})
            body = documented.get("requestBody") or (route.openapi_extra or {}).get("requestBody")
            kind, fields = None, []
            if body:
                [(content_type, content)] = body["content"].items()
                kind = "form" if content_type.startswith("multipart/") else "json"
                body_schema = content["schema"]
                fields = json_schema_fields(body_schema, {**defs, **body_schema.get("$defs", {})})
            found.append(
                Target(
                    method=method,
                    path=route.path,
                    path_params=tuple(parameters(route.dependant, "path")),
                    query=tuple(parameters(route.dependant, "query")),
                    headers=tuple(parameters(route.dependant, "header")),
                    body=kind,
                    fields=tuple(fields),
                    streams="text/event-stream" in json.dumps(documented.get("responses", {})),
                )
            )
    return found


def set_at(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``body`` with the field at ``path`` set to ``value`` (containers made as needed)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) and body else [{}]
        items[0] = set_at(items[0], rest, value)
        return items
    container = dict(body) if isinstance(body, dict) else {}
    container[head] = set_at(container.get(head, {}), rest, value)
    return container


@pytest.fixture(scope="module")
def studio(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[tuple[TestClient, dict[str, str], Owned]]:
    root = prepare_root(tmp_path_factory.mktemp("fuzzed") / "data", demo_model_dir)
    settings_ = Settings.load(root)
    settings_.nodes = [NodeSettings(name="n0", tier="cpu")]
    with in_process_app(settings_) as (http, token):
        auth = {"Authorization": f"Bearer {token}"}
        owned = Owned()
        plane = http.app.state.plane
        uploaded = http.post(
            "/api/v1/datasets", files={"file": ("d.jsonl", CHAT * 8)}, headers=auth
        )
        dataset_id = uploaded.json()["id"]
        ended = http.post("/api/v1/runs", json=payload(dataset_id, "ended"), headers=auth).json()
        http.post(f"/api/v1/runs/{ended['id']}/cancel", headers=auth)
        placed = http.post("/api/v1/runs", json=payload(dataset_id, "placed"), headers=auth).json()
        tick(plane)
        backend: FakeBackend = plane.workers  # type: ignore[assignment]
        launch = next(launch for launch in backend.launches if launch.run_id == placed["id"])
        entry_id = new_id("hub")
        with plane.sessions.begin() as session:
            account_id = session.get(Run, ended["id"]).account_id
            session.add(
                HubEntry(
                    id=entry_id,
                    account_id=account_id,
                    run_id=ended["id"],
                    name="ended",
                    base_model="tunery/demo-tiny",
                    artifacts={},
                    created_at=now(),
                )
            )
        hook = http.post(
            "/api/v1/webhooks", json={"url": "https://hooks.example.com/x"}, headers=auth
        ).json()
        owned.ids = {
            "dataset_id": dataset_id,
            "file_id": dataset_id,
            "run_id": ended["id"],
            "job_id": ended["id"],
            "entry_id": entry_id,
            "artifact": "lora",
            "model": ended["id"],
            "endpoint_id": hook["id"],
            "attempt_id": launch.attempt_id,
            "kind": "lora",
            "step": "5",
        }
        owned.attempt_token = launch.token
        yield http, auth, owned


def base_body(target: Target, owned: Owned) -> Any:
    """A valid body for the route, which one field at a time is made odd."""
    dataset = owned.ids["dataset_id"]
    bodies: dict[str, Any] = {
        "/api/v1/runs": payload(dataset, "fuzzed"),
        "/api/v1/runs/estimate": payload(dataset, "fuzzed"),
        "/api/v1/runs/{run_id}": {"tags": ["fuzzed"], "note": "fuzzed"},
        "/api/v1/webhooks": {"url": "https://hooks.example.com/fuzzed"},
        "/v1/fine_tuning/jobs": {"model": "tunery/demo-tiny", "training_file": dataset},
        "/v1/chat/completions": {
            "model": owned.ids["run_id"],
            "messages": [{"role": "user", "content": "hi"}],
        },
        "/internal/attempts/{attempt_id}/events": {
            "events": [{"kind": "log", "data": {"message": "fuzzed"}}]
        },
        "/api/v1/datasets": {"name": "fuzzed.jsonl"},
        "/v1/files": {"purpose": "fine-tune"},
    }
    assert target.path in bodies, f"{target}: give the fuzzer a valid body to start from"
    return copy.deepcopy(bodies[target.path])


def send(
    http: TestClient,
    auth: dict[str, str],
    owned: Owned,
    target: Target,
    choice: tuple[str, Any],
    odd: Any,
) -> int:
    where, name = choice
    params = dict(owned.ids)
    query: dict[str, str] = {}
    headers = {**auth, "X-Attempt-Token": owned.attempt_token}
    body = base_body(target, owned) if target.body else None
    if where == "path":
        params[name] = as_text(odd)
    elif where == "query":
        query[name] = as_text(odd)
    elif where == "header":
        headers[name] = as_text(odd)[:2000]
    elif where == "field":
        body = set_at(body, name, PLACE if isinstance(odd, Big) else odd)
    path = target.path
    for param in target.path_params:
        text = quote(str(params.get(param, "x")).encode("utf-8", "surrogatepass"), safe="")
        path = path.replace("{" + param + "}", text).replace("{" + param + ":path}", text)
    if query:
        path += "?" + "&".join(
            f"{quote(key)}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
            for key, value in query.items()
        )
    # Header bytes as a client can send them: any text, as its UTF-8 bytes.
    raw_headers = {key: value.encode("utf-8", "surrogatepass") for key, value in headers.items()}
    kwargs: dict[str, Any] = {"headers": raw_headers}
    if target.body == "json":
        kwargs["content"] = as_json(body, odd).encode("utf-8", "surrogatepass")
        raw_headers["Content-Type"] = b"application/json"
    elif target.body == "form":
        form = {key: as_text(value) for key, value in (body or {}).items()}
        if isinstance(odd, Big):
            form = {key: odd.json() if value == PLACE else value for key, value in form.items()}
        kwargs["data"] = {k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}
        kwargs["files"] = {"file": ("fuzzed.jsonl", CHAT * 4)}
    if target.streams:
        with http.stream(target.method, path, **kwargs) as response:
            return response.status_code
    return http.request(target.method, path, **kwargs).status_code


APP_TARGETS: list[Target] = []


def _all_targets() -> list[Target]:
    import tempfile

    from tunery.api.app import create_app

    if not APP_TARGETS:
        with tempfile.TemporaryDirectory() as scratch:
            settings_ = Settings(data_dir=Path(scratch), nodes=[NodeSettings(name="n", tier="cpu")])
            app = create_app(settings_, server_url="", backend=FakeBackend(), run_scheduler=False)
            try:
                APP_TARGETS.extend(targets(app))
            finally:
                app.state.plane.close()
    return APP_TARGETS


def choices(target: Target) -> list[tuple[str, Any]]:
    return [
        *(("path", name) for name in target.path_params),
        *(("query", name) for name in target.query),
        *(("header", name) for name in target.headers),
        *(("field", name) for name in target.fields),
    ]


FUZZED = [target for target in _all_targets() if choices(target)]


@pytest.mark.parametrize("target", FUZZED, ids=str)
def test_every_known_odd_value_at_every_parameter_is_refused_not_a_5xx(
    studio, target: Target, figures
) -> None:
    http, auth, owned = studio
    crashes = []
    for choice in choices(target):
        for odd in KNOWN_ODD:
            status = send(http, auth, owned, target, choice, odd)
            figures.answer(AREA, _Status(status), range(100, 500))
            if status >= 500:
                crashes.append((choice, repr(odd)[:80], status))
    assert crashes == [], str(target)


@pytest.mark.parametrize("target", FUZZED, ids=str)
def test_drawn_odd_values_get_no_5xx(studio, target: Target, figures) -> None:
    http, auth, owned = studio

    @settings(
        max_examples=max(30, 2 * len(choices(target))),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(choice=st.sampled_from(choices(target)), odd=DRAWN_ODD)
    def fuzz(choice: tuple[str, Any], odd: Any) -> None:
        status = send(http, auth, owned, target, choice, odd)
        figures.answer(AREA, _Status(status), range(100, 500))
        assert status < 500, (str(target), choice, repr(odd)[:200], status)

    fuzz()


@dataclass(frozen=True)
class _Status:
    status_code: int
