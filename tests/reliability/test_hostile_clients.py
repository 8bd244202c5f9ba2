"""Clients that send too much, too slowly or nothing at all, to a real ``tunery serve``.

Memory is measured on the server's process (psutil), latency of ``/healthz`` from a second
client while the attack runs. A refused upload must answer 4xx and leave its keep-alive
connection usable; a 500 would drop it.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from control_harness import Client, Server, prepare_root, running_server, server_env
from server_kit import peak_rss, raw_request, read_answer, server_rss, status_of

from tunery.api.slow_clients import HEADER_SECONDS

MIB = 2**20
STALL_SECONDS = 30.0
"""A bound no answer reaches on a loaded machine unless the server stalled."""
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Server]:
    root = prepare_root(tmp_path_factory.mktemp("clients") / "data", demo_model_dir)
    with running_server(root, server_env(root)) as server:
        yield server


def million_rows_parquet() -> bytes:
    """3 million one-letter rows: about 70 KB on disk, gigabytes if decoded row by row."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array(["a"] * 3_000_000)}), sink)
    return sink.getvalue()


HOSTILE_FILES = {
    "deep.jsonl": ('{"messages": ' + "[" * 10_000 + "]" * 10_000 + "}\n").encode(),
    "digits.jsonl": ('{"text": "a", "metadata": ' + "9" * 5_000 + "}\n").encode(),
    "surrogate.jsonl": b'{"text": "a\\ud800b"}\n',
    "latin1.jsonl": b'{"text": "caf\xe9"}\n',
    "nul.csv": b"text\n\x00\x00\n",
    "empty.jsonl": b"",
    "noext": b"{}",
    "not-parquet.parquet": b"PAR1" + b"\0" * 64,
}


def test_hostile_uploads_answer_4xx_and_keep_the_connection(server: Server, figures) -> None:
    files = {**HOSTILE_FILES, "rows.parquet": million_rows_parquet()}
    client = Client(server)
    try:
        with peak_rss(server) as peak:
            before = server_rss(server)
            for name, content in files.items():
                answer = client.upload_bytes(name, content)
                figures.answer("hostile datasets", answer, {400, 422})
                assert answer.status_code in (400, 422), (name, answer.text)
                assert answer.headers.get("connection") != "close", name
                assert client.http.get("/credits").status_code == 200  # same connection
        assert peak[0] - before < 300 * MIB, (peak[0] - before) / MIB
    finally:
        client.close()


def one_string_a_million_times() -> bytes:
    """The probe's file: a million rows of one dictionary-encoded 200-character string,
    zstd; about 24 KB on disk, 200 MB decoded."""
    sink = io.BytesIO()
    text = pa.array(["a" * 200] * 1_000_000).dictionary_encode()
    pq.write_table(pa.table({"text": text}), sink, compression="zstd")
    return sink.getvalue()


def test_a_small_parquet_file_that_decodes_big_costs_one_batch(server: Server, figures) -> None:
    """Validating an upload keeps no rows: its memory is one batch, whatever the file
    decodes to (the probe saw +461 MB for 24 KB)."""
    content = one_string_a_million_times()
    headers = {"Authorization": f"Bearer {server.token}"}
    warm = io.BytesIO()  # Parquet's reader loaded first: its import is not the file's cost
    pq.write_table(pa.table({"text": ["a"]}), warm)
    client = Client(server)
    try:
        assert client.upload_bytes("warm.parquet", warm.getvalue()).status_code == 201
    finally:
        client.close()
    before = server_rss(server)
    with peak_rss(server) as peak:  # a million rows take a while to validate on two cores
        answer = httpx.post(
            f"{server.url}/api/v1/datasets",
            files={"file": ("one-string.parquet", content)},
            headers=headers,
            timeout=600,
        )
    grown = (peak[0] - before) / MIB
    figures.measure("24 KB Parquet of 1M dictionary rows: file size (KB)", len(content) / 1000)
    figures.measure("24 KB Parquet of 1M dictionary rows: server memory growth (MiB)", grown)
    figures.attack("memory and stalls", refused=answer.status_code == 201 and grown < 64)
    assert answer.status_code == 201, answer.text
    assert answer.json()["rows"] == 1_000_000
    assert grown < 64, grown


def test_healthz_answers_while_a_large_dataset_is_validated(server: Server, figures) -> None:
    """The server keeps answering while a 150,000-row upload is validated. What is asserted
    cannot be noise on a busy machine: probes are answered while the upload is still under
    way (the server does not stall for the whole of it), each within a bound generous
    enough for any load; how long they took is a figure in the report."""
    line = json.dumps(CHAT)
    big = ("\n".join([line] * 150_000) + "\n").encode()  # about 12 MB, 150k rows
    client = Client(server)
    done = threading.Event()
    answers: list[int] = []

    def upload() -> None:
        try:
            answers.append(client.upload_bytes("big.jsonl", big).status_code)
        finally:
            done.set()

    latencies, during = [], 0
    thread = threading.Thread(target=upload)
    thread.start()
    with httpx.Client(timeout=STALL_SECONDS) as probe:
        while not done.is_set():
            started = time.monotonic()
            assert probe.get(f"{server.url}/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
            during += not done.is_set()  # answered before the upload was through
            time.sleep(0.05)
    thread.join()
    client.close()
    assert answers == [201]
    figures.measure("/healthz during a 150,000-row upload: slowest answer (s)", max(latencies))
    figures.measure(
        "/healthz during a 150,000-row upload: median answer (s)", statistics.median(latencies)
    )
    figures.attack("memory and stalls", refused=during > 0 and max(latencies) < STALL_SECONDS)
    assert during > 0, "no probe was answered while the upload was validated"
    assert max(latencies) < STALL_SECONDS


def test_a_huge_body_without_a_token_is_refused_unread(server: Server, figures) -> None:
    before = server_rss(server)
    with (
        peak_rss(server) as peak,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n"
        )
        chunk = b"9" * MIB
        with contextlib.suppress(OSError):  # until the server closes the connection
            for _ in range(200):  # 200 MB
                sock.sendall(chunk)
        answer = read_answer(sock)
    status = status_of(answer)
    figures.attack("oversized bodies", refused=status == 401, crashed=status is None)
    assert status == 401
    assert peak[0] - before < 50 * MIB, (peak[0] - before) / MIB


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        # An upload announced past the cap, with a valid token: refused before any byte.
        (
            b"POST /api/v1/datasets HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=x"
            b"\r\nContent-Length: 4294967296\r\n",
            413,
        ),
        # A chunked JSON body (no length announced) past the JSON cap.
        (
            b"POST /api/v1/runs HTTP/1.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n",
            413,
        ),
        # A length that is not a number.
        (
            b"POST /api/v1/runs HTTP/1.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: \xd9\xa3\r\n",
            400,
        ),
    ],
)
def test_oversized_bodies_with_a_token_are_413(
    server: Server, head: bytes, expected: int, figures
) -> None:
    request = head + f"Host: x\r\nAuthorization: Bearer {server.token}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request)
        if b"chunked" in head:
            with_chunks = b"".join(b"100000\r\n" + b"9" * MIB + b"\r\n" for _ in range(3))
            with contextlib.suppress(OSError):
                sock.sendall(with_chunks)
        status = status_of(read_answer(sock))
    figures.attack("oversized bodies", refused=status in (expected, 413), crashed=status is None)
    assert status in (expected, 413)


def test_slow_headers_are_cut_off_and_the_server_stays_responsive(server: Server, figures) -> None:
    """Slowloris: a header byte every second, and connections that send nothing at all. Both
    are cut off; when (the header deadline plus however busy the machine is) is a figure."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    dribbler = socket.create_connection(("127.0.0.1", server.port))
    dribbler.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_after = None
    try:
        while time.monotonic() - started < HEADER_SECONDS + STALL_SECONDS:
            try:
                dribbler.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed_after = time.monotonic() - started
                break
            assert httpx.get(f"{server.url}/healthz", timeout=STALL_SECONDS).status_code == 200
            time.sleep(1)
        dribbler.settimeout(1)
        if closed_after is None and dribbler.recv(1) == b"":
            closed_after = time.monotonic() - started
        for sock in silent:
            sock.settimeout(STALL_SECONDS)
        silent_closed = sum(1 for sock in silent if _closed(sock))
    finally:
        for sock in [*silent, dribbler]:
            sock.close()
    figures.attack("slow clients", refused=closed_after is not None)
    figures.attack("slow clients", refused=silent_closed == len(silent))
    assert closed_after is not None, "the slow client was never cut off"
    figures.measure(
        f"slow headers: cut off after (s; the deadline is {HEADER_SECONDS:g})", closed_after
    )
    assert silent_closed == len(silent)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_half_open_bodies_hold_no_thread(server: Server, figures) -> None:
    """Requests that announce a body and stop sending: the server keeps serving others."""
    head = (
        b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\nAuthorization: Bearer " + server.token.encode() + b"\r\n\r\n{"
    )
    stalled = []
    try:
        for _ in range(60):  # more than the worker thread pool (40)
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(head)
            stalled.append(sock)
        answers = [
            httpx.get(
                f"{server.url}/api/v1/credits",
                headers={"Authorization": f"Bearer {server.token}"},
                timeout=STALL_SECONDS,
            ).status_code
            for _ in range(5)
        ]
    finally:
        for sock in stalled:
            sock.close()
    figures.attack("slow clients", refused=answers == [200] * 5)
    assert answers == [200] * 5
    assert (
        status_of(
            raw_request(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        == 200
    )
