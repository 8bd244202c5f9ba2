"""One account floods chat; another account's training run and the server do not notice.

The noisy account runs 120 concurrent chat clients with ≈1,900-token prompts for 60 s
(``chat_load.py``, a process of its own, honouring Retry-After). Meanwhile the quiet
account's run trains: it must complete on its first attempt (no lease lost, so no retry and
no extra charge) with every step once, and ``/healthz`` must answer within 1 s at the 99th
percentile. The figures go to ``build/chat-fairness.json`` (docs/reliability.md).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from control_harness import (
    Client,
    add_account,
    payload,
    prepare_root,
    running_server,
    server_env,
)
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
FIGURES = HERE.parent.parent / "build" / "chat-fairness.json"
CLIENTS = 120
SECONDS = 60
PROMPT_TOKENS = 1900
QUIET_STEPS = 12


def long_prompt(model_dir: Path, demo_dataset: Path, tokens: int) -> str:
    """Demo questions joined until the demo tokenizer counts ``tokens`` tokens."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    questions = [
        message["content"]
        for line in demo_dataset.read_text().splitlines()
        for message in json.loads(line)["messages"]
        if message["role"] == "user"
    ]
    text = ""
    for question in questions:
        longer = f"{text} {question}".strip()
        if len(tokenizer.encode(longer).ids) > tokens:
            break
        text = longer
    return text


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Probe(threading.Thread):
    """Times GET ``url`` every ``interval`` seconds until stopped."""

    def __init__(self, url: str, interval: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.headers = url, interval, headers or {}
        self.seconds: list[float] = []
        self.failures = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30, headers=self.headers) as http:
            while not self.stopped.is_set():
                started = time.monotonic()
                try:
                    ok = http.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.seconds.append(time.monotonic() - started)
                self.failures += not ok
                self.stopped.wait(self.interval)


def test_a_chat_flood_stalls_neither_another_accounts_run_nor_the_server(
    tmp_path: Path, demo_model_dir: Path, demo_dataset: Path, figures
) -> None:
    root = prepare_root(tmp_path / "data", demo_model_dir)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(long_prompt(demo_model_dir, demo_dataset, PROMPT_TOKENS))
    load_out = tmp_path / "load.json"
    with running_server(root, server_env(root)) as server:
        noisy = Client(server)
        quiet = Client(server, add_account(server, "quiet", credits=100))
        try:
            served = noisy.submit_ok(
                payload(noisy.dataset(demo_dataset), "noisy-model", export={"gguf": True})
            )
            model = noisy.wait_terminal(served["id"], timeout=900)
            assert model["status"] == "completed", model
            quiet_dataset = quiet.dataset(demo_dataset)
            run = quiet.submit_ok(
                payload(
                    quiet_dataset,
                    "quiet-run",
                    training={"max_steps": QUIET_STEPS, "checkpoint_every_steps": 4},
                )
            )
            health = Probe(f"{server.url}/healthz", 0.2)
            reads = Probe(
                f"{server.url}/api/v1/runs/{run['id']}",
                1.0,
                {"Authorization": f"Bearer {quiet.token}"},
            )
            load = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "chat_load.py"),
                    server.url,
                    noisy.token,
                    served["id"],
                    str(prompt_file),
                    str(SECONDS),
                    str(CLIENTS),
                    str(load_out),
                ]
            )
            health.start()
            reads.start()
            try:
                assert load.wait(timeout=SECONDS + 600) == 0
            finally:
                if load.poll() is None:
                    load.kill()
            done = quiet.wait_terminal(run["id"], timeout=900)
            health.stopped.set()
            reads.stopped.set()
            health.join(60)
            reads.join(60)
            steps = [row["step"] for row in quiet.metrics(run["id"])]
            attempts = server.attempts(run["id"])
        finally:
            noisy.close()
            quiet.close()
    flood = json.loads(load_out.read_text())
    statuses = flood["statuses"]
    result = {
        "clients": CLIENTS,
        "seconds": SECONDS,
        "prompt_tokens": PROMPT_TOKENS,
        "chats_answered": statuses.get("200", 0),
        "chats_refused_429": statuses.get("429", 0),
        "other_answers": {k: v for k, v in statuses.items() if k not in ("200", "429")},
        "chat_seconds_median": statistics.median(flood["latencies"])
        if flood["latencies"]
        else None,
        "healthz_probes": len(health.seconds),
        "healthz_p50_seconds": percentile(health.seconds, 0.5),
        "healthz_p99_seconds": percentile(health.seconds, 0.99),
        "run_reads_p99_seconds": percentile(reads.seconds, 0.99),
        "quiet_run": {"status": done["status"], "attempts": len(attempts), "steps": len(steps)},
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(result, indent=2) + "\n")
    held = done["status"] == "completed" and len(attempts) == 1
    figures.attack(
        "chat flood", refused=held, lost=len(set(range(1, QUIET_STEPS + 1)) - set(steps))
    )
    assert done["status"] == "completed", done
    assert len(attempts) == 1 and attempts[0]["end_reason"] == "finished", attempts
    assert steps == list(range(1, QUIET_STEPS + 1))
    assert result["chats_answered"] > 0 and result["chats_refused_429"] > 0, result
    assert result["other_answers"] == {}, result
    assert health.failures == 0 and reads.failures == 0, result
    assert result["healthz_p99_seconds"] < 1.0, result
