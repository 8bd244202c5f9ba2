"""``tunery chat`` and ``tunery webhooks`` run as a user runs them, against a real server.

Each command is a subprocess with ``TUNERY_URL`` and ``TUNERY_DATA_DIR`` set (the token
comes from the admin-token file, as on the server's machine) or with ``TUNERY_TOKEN`` set
to an account of the test's own. The quick tests share one server and train nothing; the
``slow`` ones chat with a GGUF that a real run trained and exported, and compare what the
terminal printed with what ``/v1/chat/completions`` answers for the same conversation.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import (
    Client,
    Server,
    add_account,
    free_port,
    payload,
    prepare_root,
    running_server,
    server_env,
    wait_until,
)

from tunery.webhooks.signing import signed_headers

TUNERY = [sys.executable, "-m", "tunery.cli"]
URL_ERROR = "error: invalid configuration: url: give an http:// or https:// URL with a host"
EVENTS = (
    "fine_tuning.job.cancelled, fine_tuning.job.failed, fine_tuning.job.paused, "
    "fine_tuning.job.resumed, fine_tuning.job.succeeded"
)


def tunery(
    server: Server, *args: str, input: str = "", timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``tunery ARGS`` pointed at ``server``; ``env`` adds or overrides ``TUNERY_*``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    environment.update({"TUNERY_URL": server.url, "TUNERY_DATA_DIR": str(server.root), **env})
    result = subprocess.run(
        [*TUNERY, *args],
        capture_output=True,
        text=True,
        env=environment,
        input=input,
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path
) -> Iterator[Server]:
    """This module's server lets webhooks reach loopback, where its receivers listen."""
    root = prepare_root(
        tmp_path_factory.mktemp("shared") / "data",
        demo_model_dir,
        webhooks_to_private_addresses=True,
    )
    with running_server(root, server_env(root)) as server:
        yield server


@pytest.fixture
def account(shared_server: Server) -> str:
    """A fresh account's token on the shared server, so tests see only their own things."""
    return add_account(shared_server, f"cli-{uuid.uuid4().hex[:12]}")


class Receiver:
    """A webhook endpoint on loopback that answers 204 and keeps the bodies it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        bodies, headers = self.bodies, self.headers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                headers.append(dict(self.headers))
                bodies.append(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


# Webhooks ------------------------------------------------------------------------------


def test_webhooks_add_list_and_delete(shared_server: Server, account: str) -> None:
    as_account = {"TUNERY_TOKEN": account}
    empty = tunery(shared_server, "webhooks", "list", **as_account)
    assert (empty.returncode, empty.stdout) == (0, "")
    assert empty.stderr == "no webhook endpoints: add one with `tunery webhooks add URL`\n"

    # The secret alone goes to stdout (for a script to keep); what happened goes to stderr.
    first = tunery(shared_server, "webhooks", "add", "https://hooks.example.com/a", **as_account)
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    added = re.fullmatch(
        r"added (whep_\w+) for https://hooks\.example\.com/a\n"
        r"signing secret \(shown once; verify deliveries with it\):\n",
        first.stderr,
    )
    assert added, first.stderr
    first_id = added.group(1)
    mine = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    second = tunery(
        shared_server,
        "webhooks",
        "add",
        "http://hooks.example.org/b",
        "--secret",
        mine,
        **as_account,
    )
    assert (second.returncode, second.stdout) == (0, f"{mine}\n"), second.stderr
    second_id = second.stderr.split()[1]

    listed = tunery(shared_server, "webhooks", "list", **as_account)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "URL", "EVENTS", "ADDED"]
    assert [row.split("  ")[0] for row in rows] == [first_id, second_id]
    assert "https://hooks.example.com/a" in rows[0] and EVENTS in rows[0]
    assert "http://hooks.example.org/b" in rows[1]
    assert "whsec_" not in listed.stdout  # a secret is never shown again
    api = Client(shared_server, account)
    assert [e["id"] for e in api.http.get("/webhooks").json()] == [first_id, second_id]

    deleted = tunery(shared_server, "webhooks", "delete", first_id, **as_account)
    assert (deleted.returncode, deleted.stderr) == (0, f"deleted {first_id}\n")
    assert [e["id"] for e in api.http.get("/webhooks").json()] == [second_id]
    again = tunery(shared_server, "webhooks", "delete", first_id, **as_account)
    assert again.returncode == 1
    assert again.stderr == f"error: no webhook endpoint {first_id!r}\n"
    # Another account's endpoint is not there for this one to delete.
    other = tunery(shared_server, "webhooks", "delete", second_id)
    assert other.returncode == 1
    assert other.stderr == f"error: no webhook endpoint {second_id!r}\n"
    assert [e["id"] for e in api.http.get("/webhooks").json()] == [second_id]
    api.close()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://hooks.example.com/tunery", URL_ERROR),  # not http(s)
        ("javascript:alert(1)", URL_ERROR),
        ("hooks.example.com/tunery", URL_ERROR),  # no scheme
        ("http:///tunery", URL_ERROR),  # no host
        ("https://:443/tunery", URL_ERROR),
        (  # longer than any endpoint needs
            "https://hooks.example.com/" + "a" * 2000,
            "error: invalid configuration: url: the URL is longer than 2000 characters",
        ),
    ],
)
def test_webhooks_add_refuses_a_bad_url(
    shared_server: Server, account: str, url: str, error: str
) -> None:
    result = tunery(shared_server, "webhooks", "add", url, TUNERY_TOKEN=account)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"{error}\n"
    assert Client(shared_server, account).http.get("/webhooks").json() == []


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("sk_live_abc", "a webhook secret starts with whsec_"),
        ("whsec_not*base64", "a webhook secret is whsec_ and base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "holds at least 16 bytes"),
    ],
)
def test_webhooks_add_refuses_a_bad_secret(
    shared_server: Server, account: str, secret: str, problem: str
) -> None:
    result = tunery(
        shared_server,
        "webhooks",
        "add",
        "https://hooks.example.com/tunery",
        "--secret",
        secret,
        TUNERY_TOKEN=account,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: invalid configuration: secret: a webhook secret")
    assert problem in result.stderr


def test_webhooks_deliveries_show_each_endpoints_last_answer(
    shared_server: Server, account: str, receiver: Receiver, demo_dataset: Path
) -> None:
    as_account = {"TUNERY_TOKEN": account}
    nobody = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there
    for url in (receiver.url, nobody):
        assert tunery(shared_server, "webhooks", "add", url, **as_account).returncode == 0
    empty = tunery(shared_server, "webhooks", "deliveries", **as_account)
    assert (empty.returncode, empty.stdout.split()) == (
        0,
        ["ID", "EVENT", "JOB", "STATUS", "TRIES", "LAST", "ANSWER", "CREATED"],
    )

    # A cancelled run is a fine_tuning.job.cancelled event for every endpoint.
    api = Client(shared_server, account)
    run = api.submit_ok(
        payload(api.dataset(demo_dataset), "announced", training={"max_steps": 5000})
    )
    api.cancel_ok(run["id"])

    def both_tried() -> list[dict[str, Any]] | None:
        rows = api.http.get("/webhooks/deliveries").json()
        return rows if len(rows) == 2 and all(row["attempts"] for row in rows) else None

    wait_until(both_tried, timeout=60, what="a delivery attempt to both endpoints")
    assert len(receiver.bodies) == 1 and run["id"].encode() in receiver.bodies[0]

    shown = tunery(shared_server, "webhooks", "deliveries", **as_account)
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.splitlines()[1:]
    assert len(rows) == 2, shown.stdout
    delivered = next(row for row in rows if " delivered " in row)
    assert re.search(rf"fine_tuning\.job\.cancelled\s+{run['id']}\s+delivered\s+1\s+204", delivered)
    [refused] = [row for row in rows if row != delivered]
    assert re.search(
        rf"fine_tuning\.job\.cancelled\s+{run['id']}\s+pending\s+\d+\s+ConnectError", refused
    )
    api.close()


def test_a_test_event_is_signed_delivered_and_logged(
    shared_server: Server, account: str, receiver: Receiver
) -> None:
    as_account = {"TUNERY_TOKEN": account}
    added = tunery(shared_server, "webhooks", "add", receiver.url, **as_account)
    secret = added.stdout.strip()
    api = Client(shared_server, account)
    endpoint = api.http.get("/webhooks").json()[0]["id"]
    sent = tunery(shared_server, "webhooks", "test", endpoint, **as_account)
    assert sent.returncode == 0, sent.stderr
    delivery_id = sent.stdout.strip()
    # A second test while the first is pending is refused, not queued again.
    again = api.http.post(f"/webhooks/{endpoint}/test")
    assert again.status_code in (202, 409), again.text

    def delivered() -> dict[str, Any] | None:
        rows = api.http.get("/webhooks/deliveries").json()
        done = [r for r in rows if r["id"] == delivery_id and r["status"] == "delivered"]
        return done[0] if done else None

    row = wait_until(delivered, timeout=60, what="the test event's delivery")
    assert row["event_type"] == "tunery.webhook.test" and row["job_id"] is None
    body = json.loads(receiver.bodies[0])
    assert body["type"] == "tunery.webhook.test" and body["data"] == {"endpoint_id": endpoint}
    headers = receiver.headers[0]
    expected = signed_headers(
        secret,
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        receiver.bodies[0].decode(),
    )
    assert headers["webhook-signature"] == expected["webhook-signature"]
    shown = tunery(shared_server, "webhooks", "deliveries", **as_account).stdout
    assert re.search(r"tunery\.webhook\.test\s+—\s+delivered\s+1\s+204", shown), shown
    assert api.http.post("/webhooks/whep_nope/test").status_code == 404
    api.close()


# Chat without a trained model ----------------------------------------------------------


def test_chat_with_an_unknown_or_unfinished_run_says_which(
    shared_server: Server, account: str, demo_dataset: Path
) -> None:
    as_account = {"TUNERY_TOKEN": account}
    unknown = tunery(shared_server, "chat", "run_0123456789abcdef", "-m", "hi", **as_account)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "error: The model 'run_0123456789abcdef' does not exist\n"

    api = Client(shared_server, account)
    run = api.submit_ok(
        payload(api.dataset(demo_dataset), "unfinished", training={"max_steps": 5000})
    )
    early = tunery(shared_server, "chat", run["id"], "-m", "hi", **as_account)
    assert (early.returncode, early.stdout) == (1, "")
    assert re.fullmatch(
        rf"error: The model '{run['id']}' cannot be served: its run is "
        r"(queued|waiting for gpu|training), and only a completed run's model answers\n",
        early.stderr,
    ), early.stderr
    # Someone else's run does not exist, whatever its state.
    foreign = tunery(shared_server, "chat", run["id"], "-m", "hi")
    assert foreign.returncode == 1
    assert foreign.stderr == f"error: The model {run['id']!r} does not exist\n"

    api.cancel_ok(run["id"])
    api.wait_status(run["id"], "cancelled", timeout=60)
    cancelled = tunery(shared_server, "chat", run["id"], "-m", "hi", **as_account)
    assert cancelled.returncode == 1
    assert "its run is cancelled, and only a completed run's model answers" in cancelled.stderr
    api.close()


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["-m", ""], "Invalid value for '-m' / '--message': the message is empty"),
        (["-m", "  \n"], "Invalid value for '-m' / '--message': the message is empty"),
        (["-m", "hi", "--max-tokens", "0"], "Invalid value for '--max-tokens'"),
        (["-m", "hi", "--max-tokens", "1025"], "Invalid value for '--max-tokens'"),
        (["-m", "hi", "--temperature", "2.5"], "Invalid value for '--temperature'"),
    ],
    ids=["empty", "blank", "no-tokens", "too-many-tokens", "too-hot"],
)
def test_chat_refuses_bad_options_before_asking_the_server(
    tmp_path: Path, arguments: list[str], complaint: str
) -> None:
    # No server at all: these are refused before any request is made.
    nowhere = Server(root=tmp_path, port=free_port(), env={})
    result = tunery(nowhere, "chat", "run_0123456789abcdef", *arguments)
    assert (result.returncode, result.stdout) == (2, "")
    assert complaint in result.stderr


# Tokens --------------------------------------------------------------------------------

COMMANDS = [
    ["webhooks", "list"],
    ["webhooks", "add", "https://hooks.example.com/tunery"],
    ["webhooks", "delete", "whep_0123456789abcdef"],
    ["webhooks", "deliveries"],
    ["chat", "run_0123456789abcdef", "-m", "hi"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_without_a_token_each_command_says_where_it_looked(
    shared_server: Server, tmp_path: Path, command: list[str]
) -> None:
    # A data dir with no admin-token file, and no TUNERY_TOKEN.
    result = tunery(shared_server, *command, TUNERY_DATA_DIR=str(tmp_path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"error: no API token: TUNERY_TOKEN is not set and {tmp_path / 'admin-token'} "
        "cannot be read",
        "hint: set TUNERY_TOKEN to your API token (`tunery serve` prints the admin token on "
        "first start and writes it to DATA_DIR/admin-token)",
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_a_rejected_token_is_named_with_its_source(
    shared_server: Server, command: list[str]
) -> None:
    result = tunery(shared_server, *command, TUNERY_TOKEN="tny_not-a-real-token")
    assert (result.returncode, result.stdout) == (1, "")
    first, hint = result.stderr.splitlines()
    assert first.startswith(
        f"error: the server at {shared_server.url} rejected the API token from TUNERY_TOKEN: "
    )
    # The server's own reason, in tunery's error shape or (for chat, on /v1) OpenAI's.
    assert first.endswith(("unknown or revoked token", "Incorrect API key provided."))
    assert hint.startswith("hint: set TUNERY_TOKEN to a valid token")


# Chat with a trained model -------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    server: Server
    run: dict[str, Any]
    """Completed, with a GGUF."""
    lora_only: dict[str, Any]
    """Completed, without a GGUF (export.gguf off)."""

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """What /v1/chat/completions answers for this conversation, greedily."""
        response = httpx.post(
            f"{self.server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.server.token}"},
            json={
                "model": self.run["id"],
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
            },
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Served]:
    """A server of its own with two completed runs: one exported a GGUF, one did not."""
    root = prepare_root(tmp_path_factory.mktemp("served") / "data", demo_model_dir)
    with running_server(root, server_env(root)) as server:
        api = Client(server)
        dataset_id = api.dataset(Path(__file__).parents[2] / "examples" / "demo-dataset.jsonl")
        run = api.submit_ok(payload(dataset_id, "chatty", export={"gguf": True}))
        lora_only = api.submit_ok(payload(dataset_id, "lora-only", training={"max_steps": 2}))
        runs = [api.wait_terminal(r["id"], timeout=600) for r in (run, lora_only)]
        assert [r["status"] for r in runs] == ["completed", "completed"], runs
        assert runs[0]["artifacts"]["gguf"] and runs[1]["artifacts"]["gguf"] is None
        api.close()
        yield Served(server, runs[0], runs[1])


QUESTION = "How do I reset my password?"


@pytest.mark.slow
def test_chat_prints_the_models_answer_by_any_of_its_names(served: Served) -> None:
    expected = served.answer([{"role": "user", "content": QUESTION}], 24)
    assert expected.strip()
    models = httpx.get(
        f"{served.server.url}/v1/models",
        headers={"Authorization": f"Bearer {served.server.token}"},
    ).json()["data"]
    [model_name] = [m["id"] for m in models if m["id"].endswith(served.run["id"])]
    for entry in (served.run["id"], model_name, served.run["hub_entry_id"]):
        result = tunery(
            served.server, "chat", entry, "-m", QUESTION, "--temperature", "0", "--max-tokens", "24"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{expected}\n"
        assert result.stderr == ""


@pytest.mark.slow
def test_chat_keeps_the_conversation_turn_by_turn(served: Served) -> None:
    follow_up = "And if I forgot my email?"
    first = served.answer([{"role": "user", "content": QUESTION}], 16)
    second = served.answer(
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first},
            {"role": "user", "content": follow_up},
        ],
        16,
    )
    result = tunery(
        served.server,
        "chat",
        served.run["id"],
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        input=f"{QUESTION}\n{follow_up}\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{first}\n{second}\n"
    # A prompt per turn, and one more that met the end of input.
    assert result.stderr.count("you> ") == 3

    system = "You answer in one short sentence."
    with_system = served.answer(
        [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}], 16
    )
    result = tunery(
        served.server,
        "chat",
        served.run["id"],
        "--system",
        system,
        "-m",
        QUESTION,
        "--temperature",
        "0",
        "--max-tokens",
        "16",
    )
    assert (result.returncode, result.stdout) == (0, f"{with_system}\n"), result.stderr


@pytest.mark.slow
def test_chat_with_a_run_that_exported_no_gguf_says_so(served: Served) -> None:
    result = tunery(served.server, "chat", served.lora_only["id"], "-m", QUESTION)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: The model {served.lora_only['id']!r} has no GGUF to serve: its run did not "
        "export one (export.gguf was off, or the export failed)\n"
    )


@pytest.mark.slow
def test_chat_over_the_context_is_refused_with_the_limit(served: Served) -> None:
    from tunery.openai_api.chat import MAX_PROMPT_CHARS

    result = tunery(served.server, "chat", served.run["id"], "-m", "x" * (MAX_PROMPT_CHARS + 1))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"error: the messages are longer than {MAX_PROMPT_CHARS} characters"
    )


@pytest.mark.slow
def test_chat_in_json_mode_prints_a_json_object(served: Served) -> None:
    asked = "Describe a password reset as JSON."
    response = httpx.post(
        f"{served.server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {served.server.token}"},
        json={
            "model": served.run["id"],
            "messages": [{"role": "user", "content": asked}],
            "max_tokens": 48,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    expected = response.json()["choices"][0]["message"]["content"]
    result = tunery(
        served.server,
        "chat",
        served.run["id"],
        "--json",
        "-m",
        asked,
        "--temperature",
        "0",
        "--max-tokens",
        "48",
    )
    assert (result.returncode, result.stdout) == (0, f"{expected}\n"), result.stderr
    assert result.stdout.lstrip().startswith("{")
