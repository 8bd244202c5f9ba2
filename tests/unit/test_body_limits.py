"""The body guard: no body is read before the token is checked, and none past its cap."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from control_harness import route_contexts
from fastapi import FastAPI, File, UploadFile

from tunery.api.app import create_app
from tunery.api.body_limits import WORKER_PATH, BodyGuard, BodyLimits, requires_token
from tunery.backends.fake import FakeBackend
from tunery.settings import NodeSettings, Settings

LIMITS = BodyLimits(json_bytes=1_000, report_bytes=5_000, upload_bytes=20_000)


def make_app() -> BodyGuard:
    app = FastAPI()

    @app.post("/api/v1/things")
    def things(payload: dict[str, Any]) -> dict[str, int]:
        return {"keys": len(payload)}

    @app.post("/api/v1/files")
    def files(file: Annotated[UploadFile, File()]) -> dict[str, int]:
        return {"bytes": len(file.file.read())}

    @app.post("/internal/attempts/{attempt_id}/events")
    def report(attempt_id: str, payload: list[Any]) -> dict[str, int]:
        return {"items": len(payload)}

    return BodyGuard(
        app,
        token_is_valid=lambda token: token == "good",
        attempt_token_is_valid=lambda attempt_id, token: (attempt_id, token) == ("att_1", "fence"),
        limits=LIMITS,
    )


def call(
    path: str,
    body_chunks: list[bytes],
    *,
    token: str | None = "good",
    content_type: str = "application/json",
    announce_length: bool = True,
    length: bytes | None = None,
    attempt_token: str | None = None,
) -> tuple[int, dict[str, Any], int]:
    """Send one request through the guard; returns (status, JSON answer, chunks read)."""
    headers = [(b"content-type", content_type.encode())]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if attempt_token is not None:
        headers.append((b"x-attempt-token", attempt_token.encode()))
    if length is None and announce_length:
        length = str(sum(map(len, body_chunks))).encode()
    if length is not None:
        headers.append((b"content-length", length))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
    }
    pending = list(body_chunks)
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not pending:
            return {"type": "http.disconnect"}
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # A thread of its own: in a full run the browser tier's Playwright session keeps an
    # event loop running on the main thread, where asyncio.run() refuses to start.
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, make_app()(scope, receive, send)).result()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


def test_a_request_without_a_token_is_refused_before_its_body_is_read() -> None:
    status, answer, read = call("/api/v1/things", [b'{"a": 1}'] * 3, token=None)
    assert (status, read) == (401, 0)
    assert answer["detail"]["message"] == "missing bearer token"


def test_an_unknown_token_is_refused_before_the_body_is_read() -> None:
    status, answer, read = call("/api/v1/things", [b'{"a": 1}'], token="forged")
    assert (status, read) == (401, 0)
    assert answer["detail"]["message"] == "unknown or revoked token"


def test_an_announced_length_over_the_cap_is_refused_unread() -> None:
    status, answer, read = call("/api/v1/things", [b"x" * 1_001])
    assert (status, read) == (413, 0)
    assert "limit" in answer["detail"]["message"]


def test_a_chunked_body_is_cut_off_at_the_cap() -> None:
    chunks = [b'{"a": "' + b"x" * 400, b"x" * 400, b"x" * 400, b'"}']
    status, answer, read = call("/api/v1/things", chunks, announce_length=False)
    assert status == 413
    assert read == 3  # the chunk that crossed the cap was the last one taken
    assert answer["detail"]["code"] == "payload_too_large"


def test_a_length_that_is_not_ascii_digits_is_refused_unread() -> None:
    for length in ("١٢", "²", "-1", "1e3", " 2"):
        status, answer, read = call("/api/v1/things", [b"{}"], length=length.encode())
        assert (status, read) == (400, 0), length
        assert answer["detail"]["code"] == "invalid_content_length"
    for length in ("9" * 5000, "1" + "0" * 18):
        status, _, read = call("/api/v1/things", [b"{}"], length=length.encode())
        assert (status, read) == (413, 0), length


def test_bodies_within_their_caps_reach_the_route() -> None:
    assert call("/api/v1/things", [b'{"a": 1, "b": 2}'])[:2] == (200, {"keys": 2})
    report = json.dumps(["x" * 100] * 30).encode()  # over the JSON cap, within the report cap
    answer = call("/internal/attempts/att_1/events", [report], token=None, attempt_token="fence")
    assert answer[:2] == (200, {"items": 30})


def test_a_worker_route_reads_no_body_before_the_attempt_token_is_checked() -> None:
    report = json.dumps([{}] * 30).encode()
    for attempt, token in (("att_1", None), ("att_1", "forged"), ("att_nope", "fence")):
        status, answer, read = call(
            f"/internal/attempts/{attempt}/events", [report], token=None, attempt_token=token
        )
        assert (status, read) == (404, 0), (attempt, token)
        assert answer["detail"]["code"] == "not_found"


def test_every_route_that_takes_a_body_is_behind_a_token_the_guard_checks(
    tmp_path: Path,
) -> None:
    """Enumerated from the app: a POST, PUT or PATCH route outside the paths the guard
    authenticates would read (and parse) a stranger's body."""
    settings = Settings(data_dir=tmp_path, nodes=[NodeSettings(name="n", tier="cpu")])
    app = create_app(settings, server_url="", backend=FakeBackend(), run_scheduler=False)
    try:
        routes = [
            (method, route.path)
            for route in route_contexts(app)
            for method in getattr(route, "methods", None) or ()
        ]
        unguarded = [
            (method, path)
            for method, path in routes
            if method in ("POST", "PUT", "PATCH")
            and not requires_token(path)
            and WORKER_PATH.fullmatch(path) is None
        ]
    finally:
        app.state.plane.close()
    assert len(routes) > 30  # the app's routes were found
    assert unguarded == []


def test_an_upload_over_its_cap_is_refused_while_streaming() -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunks = [head] + [b"y" * 4_000] * 10 + [f"\r\n--{boundary}--\r\n".encode()]
    status, answer, read = call(
        "/api/v1/files",
        chunks,
        content_type=f"multipart/form-data; boundary={boundary}",
        announce_length=False,
    )
    assert status == 413
    assert read < len(chunks)
    assert answer["detail"]["code"] == "payload_too_large"


def test_refusals_on_the_openai_paths_come_in_openai_shape() -> None:
    status, answer, read = call("/v1/fine_tuning/jobs", [b"{}"], token=None)
    assert (status, read) == (401, 0)
    assert answer["error"]["message"].startswith("missing bearer token")
    assert answer["error"]["type"] == "invalid_request_error"


def test_each_kind_of_request_gets_its_own_cap() -> None:
    limits = BodyLimits(json_bytes=1, report_bytes=2, upload_bytes=3, bundle_bytes=4)
    assert limits.for_request("/api/v1/runs", "application/json") == 1
    assert limits.for_request("/internal/attempts/a/events", "application/json") == 2
    assert limits.for_request("/api/v1/datasets", "multipart/form-data; boundary=x") == 3
    assert limits.for_request("/internal/attempts/a/bundles/lora", "application/zip") == 4
    assert limits.for_request("/internal/attempts/a/checkpoints/5", "application/zip") == 4
    # An attempt id that reads "bundles" lends a report route no bundle cap.
    assert limits.for_request("/internal/attempts/bundles/events", "application/json") == 2
    assert limits.for_request("/internal/attempts/a/bundles/x/events", "application/json") == 2


def test_a_json_body_with_a_lone_surrogate_is_refused_before_any_route() -> None:
    """JSON can spell a string no encoder takes; a route would fail storing it (a 500)."""
    status, answer, _ = call("/api/v1/things", [b'{"name": "a\\ud800b"}'])
    assert status == 400
    assert answer["detail"]["code"] == "invalid_json"
    assert "surrogate" in answer["detail"]["message"]
    emoji = b'{"name": "\\ud83d\\ude00", "path": "C:\\\\ud800"}'  # a pair; a backslash
    assert call("/api/v1/things", [emoji])[:2] == (200, {"keys": 2})
