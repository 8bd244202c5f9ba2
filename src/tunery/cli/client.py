"""The terminal's HTTP client for a tunery server: where it is, who you are, what went wrong.

``Client.from_env()`` needs no setup on the machine that runs ``tunery serve``: the URL
defaults to ``http://127.0.0.1:8420`` and the token to the admin token the server wrote to
``$TUNERY_DATA_DIR/admin-token``. ``TUNERY_URL`` and ``TUNERY_TOKEN`` point elsewhere.

Every failure becomes a ``ClientError`` with a message, a hint and (for 422) every problem
as a line a user can act on; callers print it and exit 1, never a traceback.

Requests that are safe to repeat (reads, cancel, and a submission carrying an
``Idempotency-Key``) are retried once on a connection error or timeout: the server answers
a repeated key with the run the first attempt created, so a retry never makes two runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, SSEError, connect_sse

from tunery.environment import Environment, environment
from tunery.errors import ConfigError
from tunery.lifecycle import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8420"
TOKEN_FILE = "admin-token"
RETRY_DELAY_SECONDS = 1.0
# The server sends a keep-alive comment every 15 s; a stream silent for longer is dead.
STREAM_READ_TIMEOUT_SECONDS = 45.0


class ClientError(Exception):
    """A request failed in a way the user should read: what, then how to fix it."""

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        problems: list[str] | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = problems or []
        self.status_code = status_code


def client_environment() -> Environment:
    """The ``TUNERY_*`` variables; a bad one is a ClientError, reported like any other."""
    try:
        return environment()
    except ConfigError as error:
        raise ClientError(error.message, hint=error.hint) from None


def token_from_env() -> tuple[str | None, str]:
    """The API token and where it came from (for error messages)."""
    variables = client_environment()
    if variables.token is not None:
        return variables.token.get_secret_value(), "TUNERY_TOKEN"
    path = variables.data_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, str(path)
    return (token or None), str(path)


def format_problem(problem: Any) -> str:
    """One 422 problem as ``field: message`` or ``file, line N: message``."""
    if not isinstance(problem, dict):
        return str(problem)
    message = problem.get("message") or problem.get("msg") or ""
    if "file" in problem:
        where = str(problem["file"])
        if problem.get("line") is not None:
            where += f", {problem.get('unit') or 'line'} {problem['line']}"
        return f"{where}: {message}"
    if "field" in problem:
        return f"{problem['field']}: {message}"
    if "loc" in problem:  # FastAPI's own request validation
        location = [str(part) for part in problem["loc"]]
        if location and location[0] in ("body", "query", "header", "path"):
            location = location[1:]
        return f"{'.'.join(location) or 'request'}: {message}"
    return str(message or problem)


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: ``event`` is the kind, ``data`` the parsed JSON payload."""

    id: str | None
    event: str
    data: Any

    @classmethod
    def decode(cls, sse: ServerSentEvent, *, last_event_id: str | None) -> SseEvent:
        """``sse`` with its JSON parsed (text that is not JSON stays text).

        An event without an ``id`` line keeps the last id, as EventSource does.
        """
        try:
            data = json.loads(sse.data)
        except json.JSONDecodeError:
            data = sse.data
        return cls(sse.id or last_event_id, sse.event, data)


class Client:
    """A thin, synchronous client of the ``/api/v1`` routes a terminal user needs."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        token_source: str = "TUNERY_TOKEN",
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retry_delay: float = RETRY_DELAY_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.token_source = token_source
        self.retry_delay = retry_delay
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._http = httpx.Client(
                base_url=self.base_url,
                headers=headers,
                transport=transport,
                timeout=httpx.Timeout(timeout, connect=5.0),
            )
        except (httpx.InvalidURL, ValueError) as error:
            raise ClientError(
                f"TUNERY_URL {base_url!r} is not a valid URL: {error}",
                hint=f"set TUNERY_URL to the server's address, e.g. {DEFAULT_URL}",
            ) from None

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        token, source = token_from_env()
        url = client_environment().url or DEFAULT_URL
        return cls(url, token, token_source=source, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Requests ----------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, retry: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send a request; raises ClientError for transport failures and HTTP errors.

        ``retry`` repeats the identical request (same headers, so the same idempotency
        key) once after a connection error or timeout.
        """
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if attempt < attempts and _retryable(error):
                    time.sleep(self.retry_delay)
                    continue
                raise self._transport_error(error) from None
            self.raise_for_status(response)
            return response
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"the server at {self.base_url} answered {method} {path} with something "
                "that is not JSON",
                hint="check that TUNERY_URL points to a tunery server",
            ) from None

    def _transport_error(self, error: httpx.TransportError) -> ClientError:
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return ClientError(
                f"cannot reach the tunery server at {self.base_url}: is `tunery serve` running?",
                hint="start it with `tunery serve`, or set TUNERY_URL to where it runs",
            )
        if isinstance(error, httpx.TimeoutException):
            return ClientError(
                f"the tunery server at {self.base_url} did not answer in time",
                hint="it may be overloaded; try again",
            )
        if isinstance(error, httpx.UnsupportedProtocol):
            return ClientError(
                f"TUNERY_URL {self.base_url!r} is not an http(s) URL",
                hint=f"set TUNERY_URL to the server's address, e.g. {DEFAULT_URL}",
            )
        return ClientError(
            f"the connection to the tunery server at {self.base_url} failed: "
            f"{error or type(error).__name__}",
            hint="try again; if it keeps failing, check the server's log",
        )

    def raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        detail = _detail(response)
        status = response.status_code
        message = str(detail.get("message") or "").strip()
        hint = str(detail.get("hint") or "").strip()
        if status == 401:
            if self.token is None:
                raise ClientError(
                    f"no API token: TUNERY_TOKEN is not set and {self.token_source} cannot be read",
                    hint="set TUNERY_TOKEN to your API token (`tunery serve` prints the admin "
                    "token on first start and writes it to DATA_DIR/admin-token)",
                    status_code=status,
                )
            raise ClientError(
                f"the server at {self.base_url} rejected the API token from "
                f"{self.token_source}: {message or 'unauthorized'}",
                hint="set TUNERY_TOKEN to a valid token (the admin token is in "
                "DATA_DIR/admin-token on the server's machine)",
                status_code=status,
            )
        if status == 403:
            message = message or "forbidden"
        problems = [format_problem(problem) for problem in detail.get("problems") or []]
        if not message:
            message = f"the server answered HTTP {status}"
            if status >= 500:
                message += " (an internal error; see the server's log)"
        raise ClientError(message, hint=hint, problems=problems, status_code=status)

    # Datasets ----------------------------------------------------------------------

    def upload_dataset(self, path: Path, *, name: str | None = None) -> dict[str, Any]:
        try:
            handle = path.open("rb")
        except OSError as error:
            raise ClientError(f"cannot read {path}: {error.strerror}") from None
        with handle:
            return self.json(
                "POST",
                "/api/v1/datasets",
                files={"file": (path.name, handle, "application/octet-stream")},
                data={"name": name} if name else None,
                # Validation of a large file takes a while on the server.
                timeout=httpx.Timeout(600.0, connect=5.0),
            )

    def list_datasets(self) -> list[dict[str, Any]]:
        return self.json("GET", "/api/v1/datasets", retry=True)

    # Runs --------------------------------------------------------------------------

    def submit_run(self, payload: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        return self.json(
            "POST",
            "/api/v1/runs",
            json=payload,
            headers={"Idempotency-Key": idempotency_key},
            retry=True,
        )

    def list_runs(self) -> list[dict[str, Any]]:
        return self.json("GET", "/api/v1/runs", retry=True)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/v1/runs/{_segment(run_id)}", retry=True)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        # Cancel is idempotent on the server, so a retry is safe.
        return self.json("POST", f"/api/v1/runs/{_segment(run_id)}/cancel", retry=True)

    def finish_run(self, run_id: str) -> dict[str, Any]:
        # Finish now is idempotent on the server too.
        return self.json("POST", f"/api/v1/runs/{_segment(run_id)}/finish", retry=True)

    def pause_run(self, run_id: str) -> dict[str, Any]:
        # Pause is idempotent on the server.
        return self.json("POST", f"/api/v1/runs/{_segment(run_id)}/pause", retry=True)

    def resume_run(self, run_id: str) -> dict[str, Any]:
        # Not idempotent (a second resume of a queued run is a 409): never retried.
        return self.json("POST", f"/api/v1/runs/{_segment(run_id)}/resume")

    def estimate_run(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/api/v1/runs/estimate", json=payload, retry=True)

    def annotate_run(
        self, run_id: str, *, tags: list[str] | None = None, note: str | None = None
    ) -> dict[str, Any]:
        body = {key: value for key, value in (("tags", tags), ("note", note)) if value is not None}
        return self.json("PATCH", f"/api/v1/runs/{_segment(run_id)}", json=body, retry=True)

    def run_metrics(self, run_id: str, export_format: str) -> str:
        """The run's per-step metrics and evaluations as ``csv`` or ``jsonl`` text."""
        path = f"/api/v1/runs/{_segment(run_id)}/metrics"
        return self.request("GET", path, params={"format": export_format}, retry=True).text

    def run_logs(self, run_id: str) -> str:
        return self.request("GET", f"/api/v1/runs/{_segment(run_id)}/logs", retry=True).text

    def get_run_recipe(self, run_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/v1/runs/{_segment(run_id)}/recipe", retry=True)

    def follow_events(
        self,
        run_id: str,
        *,
        last_event_id: str | None = None,
        max_reconnects: int = 5,
        backoff_seconds: float = 1.0,
        on_reconnect: Callable[[ClientError, float], None] | None = None,
    ) -> Iterator[SseEvent]:
        """The run's events, history first, until the stream ends on a terminal status.

        httpx-sse reads the stream; keep-alives and a bare ``retry:`` are not events, and a
        ``retry:`` from the server sets the least wait before a reconnect.

        A dropped connection (or a stream that ends before the run is terminal) is resumed
        with ``Last-Event-ID``, so no event is lost or repeated; after ``max_reconnects``
        failed tries in a row it raises ClientError. ``on_reconnect(problem, delay)`` is
        told before each wait.
        """
        path = f"/api/v1/runs/{_segment(run_id)}/events"
        failures = 0
        retry_seconds = 0.0
        while True:
            # A stream's connection is never reused: a server draining for shutdown could
            # otherwise hold the next request on it until the read timeout.
            headers = {"Connection": "close"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            finished = False
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    path,
                    headers=headers,
                    timeout=httpx.Timeout(5.0, read=STREAM_READ_TIMEOUT_SECONDS),
                ) as source:
                    status_code = source.response.status_code
                    if status_code < 500:
                        self.raise_for_status(source.response)  # 401, 404: no point retrying
                        for sse in source.iter_sse():
                            if sse.retry is not None:
                                retry_seconds = sse.retry / 1000
                            if not sse.data:
                                continue  # a bare `retry:` or a keep-alive: no event to dispatch
                            event = SseEvent.decode(sse, last_event_id=last_event_id)
                            failures = 0
                            last_event_id = event.id
                            if event.event == "status" and isinstance(event.data, dict):
                                finished = event.data.get("status") in TERMINAL
                            yield event
                if finished:
                    return
                problem = ClientError(
                    f"the event stream of run {run_id} ended before the run did "
                    f"(HTTP {status_code})",
                    hint="try again; if it keeps failing, check the server's log",
                )
            except SSEError as error:
                raise ClientError(
                    f"the server at {self.base_url} did not answer with an event stream: {error}",
                    hint="check that TUNERY_URL points to a tunery server",
                ) from None
            except httpx.TransportError as error:
                problem = self._transport_error(error)
            failures += 1
            if failures > max_reconnects:
                raise problem
            delay = min(max(retry_seconds, backoff_seconds * 2 ** (failures - 1)), 30.0)
            if on_reconnect is not None:
                on_reconnect(problem, delay)
            time.sleep(delay)


def _retryable(error: httpx.TransportError) -> bool:
    return isinstance(
        error,
        httpx.ConnectError
        | httpx.TimeoutException
        | httpx.RemoteProtocolError
        | httpx.ReadError
        | httpx.WriteError,
    )


def _segment(value: str) -> str:
    """An id as one URL path segment (a stray slash must not reach another route)."""
    from urllib.parse import quote

    return quote(value, safe="")


def _detail(response: httpx.Response) -> dict[str, Any]:
    """The ``detail`` object of an error body, whatever its shape (OpenAI's ``error`` on
    ``/v1`` included)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return {"message": text[:300]} if text else {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return {"message": str(body["error"].get("message") or "")}
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI request validation: a list of problems
        return {"message": "the request was rejected", "problems": detail}
    if isinstance(detail, str):
        return {"message": detail}
    return detail if isinstance(detail, dict) else {}
