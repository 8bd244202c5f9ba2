"""Every refusal on /v1 reaches the real SDK as its own exception type, with ``param``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from control_harness import add_account

import openai


@pytest.fixture(scope="module")
def training_file(api_server, demo_dataset: Path) -> str:
    client = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=api_server.token)
    with demo_dataset.open("rb") as file:
        return client.files.create(file=file, purpose="fine-tune").id


def test_a_file_with_bad_lines_is_refused_with_their_line_numbers(api_server, sdk):
    rows = b'{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": 1}\nnot json\n'
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).files.create(file=("bad.jsonl", io.BytesIO(rows)), purpose="fine-tune")
    assert caught.value.param == "file"
    assert caught.value.code == "invalid_file"
    assert "line 2" in caught.value.message and "line 3" in caught.value.message


def test_only_fine_tune_files_are_taken(api_server, sdk, demo_dataset):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).files.create(file=demo_dataset.open("rb"), purpose="batch")
    assert caught.value.param == "purpose"


def test_files_upload_list_read_and_delete(api_server, sdk, demo_dataset):
    client = sdk(api_server)
    uploaded = client.files.create(file=demo_dataset.open("rb"), purpose="fine-tune")
    assert uploaded.purpose == "fine-tune" and uploaded.bytes == demo_dataset.stat().st_size
    assert client.files.retrieve(uploaded.id).filename == demo_dataset.name
    assert client.files.content(uploaded.id).read() == demo_dataset.read_bytes()
    assert uploaded.id in [file.id for file in client.files.list()]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_a_missing_training_file_names_the_param(api_server, sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(model="tunery/demo-tiny", training_file="ds_nope")
    assert caught.value.param == "training_file"


@pytest.mark.parametrize(
    ("hyperparameters", "param"),
    [
        ({"n_epochs": 0}, "method.supervised.hyperparameters.n_epochs"),
        ({"batch_size": "many"}, "method.supervised.hyperparameters.batch_size"),
        (
            {"learning_rate_multiplier": -1},
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        ({"n_epochs": 5000}, "method.supervised.hyperparameters.n_epochs"),
    ],
)
def test_invalid_hyperparameters_name_their_param(
    api_server, sdk, training_file, hyperparameters, param
):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=training_file,
            method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        )
    assert caught.value.param == param


def test_the_deprecated_hyperparameters_are_checked_too(api_server, sdk, training_file):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=training_file,
            hyperparameters={"n_epochs": 1.5},
        )
    assert caught.value.param == "hyperparameters.n_epochs"


@pytest.mark.parametrize("method", ["dpo", "reinforcement"])
def test_dpo_and_reinforcement_are_refused_clearly(api_server, sdk, training_file, method):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny", training_file=training_file, method={"type": method}
        )
    assert caught.value.param == "method.type"
    assert "supervised" in caught.value.message


def test_an_unknown_training_file_is_an_invalid_file(api_server, sdk, training_file):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny", training_file=training_file, validation_file="ds_nope"
        )
    assert (caught.value.param, caught.value.code) == ("validation_file", "invalid_file")
    assert "ds_nope" in caught.value.message


@pytest.mark.parametrize("extra", [[], "x", 0, False, {"training": "x"}, {"training": []}])
def test_the_tunery_object_must_hold_recipe_sections(api_server, sdk, training_file, extra):
    client = sdk(api_server)
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model="tunery/demo-tiny", training_file=training_file, extra_body={"tunery": extra}
        )
    assert caught.value.param in ("tunery", "tunery.training")
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before


def test_an_idempotency_key_names_one_request_metadata_included(
    api_server, sdk, training_file, quick
):
    client = sdk(api_server)
    first = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny",
        training_file=training_file,
        metadata={"team": "a"},
        extra_body={"tunery": quick},
        extra_headers={"Idempotency-Key": "same-key-1"},
    )
    retried = client.fine_tuning.jobs.create(
        model="tunery/demo-tiny",
        training_file=training_file,
        metadata={"team": "a"},
        extra_body={"tunery": quick},
        extra_headers={"Idempotency-Key": "same-key-1"},
    )
    assert retried.id == first.id
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=training_file,
            metadata={"team": "b"},
            extra_body={"tunery": quick},
            extra_headers={"Idempotency-Key": "same-key-1"},
        )
    assert caught.value.param == "Idempotency-Key"
    assert client.fine_tuning.jobs.retrieve(first.id).metadata == {"team": "a"}
    client.fine_tuning.jobs.cancel(first.id)


def test_an_unknown_model_names_the_param(api_server, sdk, training_file):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(model="/no/such/model", training_file=training_file)
    assert caught.value.param == "model"


def test_a_wrong_key_is_401(api_server, sdk):
    client = sdk(api_server, "tny_not-a-token")
    with pytest.raises(openai.AuthenticationError):
        client.fine_tuning.jobs.list()
    with pytest.raises(openai.AuthenticationError):
        client.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")


def test_another_accounts_job_is_404_and_cancel_is_idempotent(
    api_server, sdk, training_file, quick
):
    owner = sdk(api_server)
    job = owner.fine_tuning.jobs.create(
        model="tunery/demo-tiny", training_file=training_file, extra_body={"tunery": quick}
    )
    assert job.status in ("queued", "running")
    stranger = sdk(api_server, add_account(api_server, "stranger"))
    for call in (
        stranger.fine_tuning.jobs.retrieve,
        stranger.fine_tuning.jobs.cancel,
        stranger.fine_tuning.jobs.list_events,
        stranger.fine_tuning.jobs.checkpoints.list,
    ):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    assert job.id not in [other.id for other in stranger.fine_tuning.jobs.list()]
    cancelled = owner.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert owner.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    messages = [event.message for event in owner.fine_tuning.jobs.list_events(job.id)]
    assert messages[0].startswith("Job status: cancelled")
