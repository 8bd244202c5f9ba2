"""Pause and resume through the real SDK: the job stops at a checkpoint, frees its node,
bills nothing while paused, resumes, and completes with every step trained once; webhooks
announce both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import wait_until
from webhook_receiver import Receiver

import openai

pytestmark = pytest.mark.slow
STEPS = 14


def test_a_job_pauses_bills_nothing_while_paused_and_resumes_every_step_once(
    api_server, sdk, quick, demo_dataset: Path
) -> None:
    client: openai.OpenAI = sdk(api_server)
    native = httpx.Client(
        base_url=f"{api_server.url}/api/v1",
        headers={"Authorization": f"Bearer {api_server.token}"},
        timeout=30,
    )
    receiver = Receiver()
    hook = native.post(
        "/webhooks",
        json={
            "url": receiver.url,
            "event_types": ["fine_tuning.job.paused", "fine_tuning.job.resumed"],
        },
    )
    assert hook.status_code == 201, hook.text
    training = client.files.create(file=demo_dataset.open("rb"), purpose="fine-tune")
    # Checkpoints every 50 steps: the one the run resumes from is the pause's own.
    recipe = {
        **quick,
        "training": {**quick["training"], "max_steps": STEPS, "checkpoint_every_steps": 50},
    }
    job = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny", training_file=training.id, extra_body={"tunery": recipe}
    )

    def run() -> dict[str, Any]:
        return native.get(f"/runs/{job.id}").json()

    wait_until(lambda: (run()["metrics"].get("step") or 0) >= 2, timeout=600, what="step 2")
    asked = client.fine_tuning.jobs.pause(job.id)
    assert asked.id == job.id and asked.status in ("running", "paused")
    paused = wait_until(
        lambda: (
            (job_now := client.fine_tuning.jobs.retrieve(job.id)).status == "paused" and job_now
        ),
        timeout=300,
        what="the job to pause",
    )
    assert paused.tunery["status"] == "paused"
    at_pause = run()
    step = at_pause["metrics"]["step"]
    assert 2 <= step < STEPS
    assert next(t for t in native.get("/tiers").json() if t["id"] == "cpu")["nodes_free"] == 1
    time.sleep(3)
    still = run()
    assert still["status"] == "paused"
    assert still["metrics"]["credits"] == at_pause["metrics"]["credits"]
    assert still["metrics"]["billable_seconds"] == at_pause["metrics"]["billable_seconds"]
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"  # idempotent

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)
    done = wait_until(
        lambda: (
            (job_now := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and job_now
        ),
        timeout=600,
        what="the job to finish",
    )
    assert done.status == "succeeded", done.error
    steps = [row["step"] for row in native.get(f"/runs/{job.id}/metrics").json()]
    assert steps == list(range(1, STEPS + 1))
    attempts = api_server.attempts(job.id)
    assert [a["end_reason"] for a in attempts] == ["paused", "finished"]
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(f"paused after step {step}" in message for message in messages)
    assert any(message.startswith("Job status: paused") for message in messages)
    secret = hook.json()["secret"]
    announced = wait_until(
        lambda: len(receiver.events(client, secret)) >= 2 and receiver.events(client, secret),
        timeout=30,
        what="the pause and resume webhooks",
    )
    assert [(event.type, event.data.id) for event in announced] == [
        ("fine_tuning.job.paused", job.id),
        ("fine_tuning.job.resumed", job.id),
    ]
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)
    receiver.server.shutdown()
    native.close()
