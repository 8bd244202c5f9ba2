"""The real ``openai`` SDK against a real ``tunery serve``: upload, fine-tune, follow,
page, read events and checkpoints, chat with the result, and receive signed webhooks.

One job trains (with a GGUF export) and is shared by the module's tests.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_harness import wait_until
from webhook_receiver import Receiver

import openai

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def receiver(api_server) -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver(fail_first=True)
    response = httpx.post(
        f"{api_server.url}/api/v1/webhooks",
        json={"url": receiver.url},
        headers={"Authorization": f"Bearer {api_server.token}"},
    )
    assert response.status_code == 201, response.text
    yield receiver, response.json()["secret"]
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=api_server.token, max_retries=0)


@pytest.fixture(scope="module")
def finished(client, receiver, quick, demo_dataset: Path, validation_rows: Path) -> dict[str, Any]:
    """A job created and followed to its end with nothing but the SDK (six steps, GGUF)."""
    with_gguf = {
        **quick,
        "training": {**quick["training"], "max_steps": 6},
        "export": {"gguf": True},
    }
    training = client.files.create(file=demo_dataset.open("rb"), purpose="fine-tune")
    validation = client.files.create(file=validation_rows.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny",
        training_file=training.id,
        validation_file=validation.id,
        suffix="support-bot",
        seed=7,
        metadata={"team": "support"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 10}},
        },
        extra_body={"tunery": with_gguf},
    )
    assert job.status in ("queued", "running")
    seen = set()

    def done() -> Any:
        current = client.fine_tuning.jobs.retrieve(job.id)
        seen.add(current.status)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    final = wait_until(done, timeout=400, interval=1, what="the job to finish")
    assert final.status == "succeeded", final.error
    return {"job": final, "created": job, "statuses": seen, "training_file": training.id}


def test_the_job_succeeds_with_openai_fields(finished):
    job, created = finished["job"], finished["created"]
    assert created.hyperparameters.batch_size == 4
    assert created.hyperparameters.learning_rate_multiplier == 10
    assert created.method.type == "supervised" and created.seed == 7
    assert created.metadata == {"team": "support"} and created.validation_file
    assert (
        job.fine_tuned_model.startswith("ft:tunery/demo-tiny:") and job.id in job.fine_tuned_model
    )
    assert ":support-bot:" in job.fine_tuned_model
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at
    # Six steps of four examples are less than one epoch of the demo data: one epoch, not
    # the recipe's default of three.
    assert job.hyperparameters.n_epochs == 1 and job.method.supervised.hyperparameters.n_epochs == 1
    assert job.training_file == finished["training_file"] and job.error is None
    assert job.tunery["status"] == "completed" and job.tunery["validation"] == "evaluated"
    # Recorded as a studio submission's is: later estimates measure their time on it.
    assert job.tunery["estimate"]["total_steps"] == 6
    assert "running" in finished["statuses"] or "queued" in finished["statuses"]


def test_the_results_file_is_a_metrics_csv(client, finished):
    [results] = finished["job"].result_files
    assert client.files.retrieve(results).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(results).text)))
    assert [row["step"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert all(float(row["train_loss"]) > 0 for row in rows)
    assert all(0 <= float(row["train_accuracy"]) <= 1 for row in rows)
    # A job with a validation file is evaluated at every checkpoint (every 2 steps here).
    assert [row["valid_loss"] != "" for row in rows] == [False, True] * 3
    assert float(rows[-1]["valid_loss"]) > 0
    assert 0 <= float(rows[-1]["valid_mean_token_accuracy"]) <= 1


def test_events_are_newest_first_with_metrics_and_page(client, finished):
    job_id = finished["job"].id
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=3))  # pages of three
    ids = [int(event.id.removeprefix("ftevent-")) for event in events]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert events[0].message.startswith("Job status: completed")
    metrics = [event for event in events if event.type == "metrics"]
    training = [event for event in metrics if "train_loss" in event.data]
    assert [event.data["step"] for event in training] == [6, 5, 4, 3, 2, 1]
    assert training[0].message.startswith("Step 6/6: training loss=")
    assert all(0 <= event.data["train_mean_token_accuracy"] <= 1 for event in training)
    validation = [event for event in metrics if "valid_loss" in event.data]
    assert [event.data["step"] for event in validation] == [6, 4, 2]  # at every checkpoint
    assert validation[0].data["valid_loss"] > 0
    assert validation[0].message.startswith("Step 6/6: validation loss=")
    assert events[-1].message.startswith("Job status: queued")
    page = client.fine_tuning.jobs.list_events(job_id, limit=2)
    assert page.has_more and len(page.data) == 2


def test_checkpoints_carry_step_and_train_loss(client, finished):
    job = finished["job"]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert all(c.metrics.train_loss > 0 for c in checkpoints)
    assert all(0 <= c.metrics.train_mean_token_accuracy <= 1 for c in checkpoints)
    # Evaluated at every checkpoint, on the whole validation file each time.
    for checkpoint in checkpoints:
        numbers = checkpoint.metrics
        assert numbers.valid_loss > 0 and numbers.full_valid_loss == numbers.valid_loss
        assert 0 <= numbers.full_valid_mean_token_accuracy <= 1
        assert numbers.full_valid_mean_token_accuracy == numbers.valid_mean_token_accuracy
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    second = client.fine_tuning.jobs.checkpoints.list(job.id, limit=1, after=checkpoints[0].id)
    assert [c.step_number for c in second.data] == [4] and second.has_more


def test_jobs_list_pages_and_filters_by_metadata(client, finished, quick):
    file_id = finished["training_file"]
    extra = [
        client.fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=file_id,
            metadata={"batch": "b"},
            extra_body={"tunery": quick},
        )
        for _ in range(2)
    ]
    for job in extra:
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    first = client.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in first.data] == [extra[1].id, extra[0].id] and first.has_more
    everything = [job.id for job in client.fine_tuning.jobs.list(limit=1)]  # auto-paging
    assert everything[:3] == [extra[1].id, extra[0].id, finished["job"].id]
    filtered = client.fine_tuning.jobs.list(metadata={"team": "support"})
    assert [job.id for job in filtered.data] == [finished["job"].id]


def test_models_and_chat_completions_plain_and_streamed(client, finished):
    name = finished["job"].fine_tuned_model
    assert name in [model.id for model in client.models.list()]
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = client.chat.completions.create(
        model=name, messages=question, max_tokens=24, temperature=0
    )
    assert answer.model == name and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content and answer.usage.completion_tokens <= 24
    stream = client.chat.completions.create(
        model=name, messages=question, max_tokens=24, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == answer.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="ft:nope:run_0", messages=question)
    assert caught.value.param == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=name, messages=question, max_tokens=100_000)
    assert caught.value.param == "max_tokens"


def test_webhooks_are_signed_retried_and_logged(api_server, client, finished, receiver):
    hooks, secret = receiver
    job_id = finished["job"].id

    def succeeded_twice() -> list[Any]:
        events = hooks.events(client, secret)
        return [e for e in events if e.type == "fine_tuning.job.succeeded" and e.data.id == job_id]

    deliveries = wait_until(lambda: len(succeeded_twice()) >= 2 and succeeded_twice(), timeout=30)
    assert deliveries[0].id == deliveries[1].id  # a retry keeps its webhook-id
    with pytest.raises(openai.InvalidWebhookSignatureError):
        headers, body = hooks.received[-1]
        client.webhooks.unwrap(body.replace(b"succeeded", b"failed"), headers, secret=secret)

    def cancelled() -> set[str]:
        events = hooks.events(client, secret)
        return {e.data.id for e in events if e.type == "fine_tuning.job.cancelled"}

    wait_until(lambda: len(cancelled()) >= 2, timeout=30, what="the cancelled jobs' webhooks")
    log = httpx.get(
        f"{api_server.url}/api/v1/webhooks/deliveries",
        headers={"Authorization": f"Bearer {api_server.token}"},
    ).json()
    mine = next(row for row in log if row["job_id"] == job_id)
    assert mine["status"] == "delivered" and mine["attempts"] == 2
    assert json.loads(hooks.received[0][1])["object"] == "event"
