"""Every refusal on /v1 reaches the real SDK as its own exception type, with ``param``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from control_harness import add_account, wait_until

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


def test_reinforcement_is_refused_clearly(api_server, sdk, training_file):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny", training_file=training_file, method={"type": "reinforcement"}
        )
    assert (caught.value.param, caught.value.code) == ("method.type", "unsupported_method")
    assert "supervised and dpo" in caught.value.message


@pytest.fixture(scope="module")
def preference_file(api_server, tmp_path_factory) -> str:
    from tunery.catalog.preference_data import write_preference_dataset

    path = write_preference_dataset(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", count=40)
    client = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=api_server.token)
    with path.open("rb") as file:
        return client.files.create(file=file, purpose="fine-tune").id


def test_a_file_of_the_other_kind_names_the_training_file(
    api_server, sdk, training_file, preference_file
):
    client = sdk(api_server)
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model="tunery/demo-tiny", training_file=training_file, method={"type": "dpo"}
        )
    assert (caught.value.param, caught.value.code) == ("training_file", "invalid_file")
    assert "holds chat rows (messages format); method.type dpo trains on preference pairs" in (
        caught.value.message
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tunery/demo-tiny", training_file=preference_file)
    assert caught.value.param == "training_file"
    assert "holds preference pairs" in caught.value.message
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before


@pytest.mark.parametrize("beta", [0, -1, 11, "high", True])
def test_a_bad_beta_names_its_param(api_server, sdk, preference_file, beta):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=preference_file,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}},
        )
    assert caught.value.param == "method.dpo.hyperparameters.beta"


def test_an_unknown_fine_tuned_model_names_the_model(api_server, sdk, preference_file):
    client = sdk(api_server)
    for model in ("ft:tunery/demo-tiny:acc:bot:run_0000000000000000", "run_0000000000000000"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(
                model=model, training_file=preference_file, method={"type": "dpo"}
            )
        assert (caught.value.param, caught.value.code) == ("model", "model_not_found")


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
        stranger.fine_tuning.jobs.pause,
        stranger.fine_tuning.jobs.resume,
    ):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    assert job.id not in [other.id for other in stranger.fine_tuning.jobs.list()]
    cancelled = owner.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert owner.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    messages = [event.message for event in owner.fine_tuning.jobs.list_events(job.id)]
    assert messages[0].startswith("Job status: cancelled")
    for call, why in (
        (owner.fine_tuning.jobs.pause, "only an unfinished run pauses"),
        (owner.fine_tuning.jobs.resume, "not paused"),
    ):
        with pytest.raises(openai.ConflictError) as refused:
            call(job.id)
        assert why in refused.value.message and "cancelled" in refused.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        owner.fine_tuning.jobs.pause("ftjob-nope")
    assert "ftjob-nope" in missing.value.message


def test_unknown_routes_and_methods_answer_in_openais_shape(api_server, sdk):
    client = sdk(api_server)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.get("/no/such/route", cast_to=object)
    assert unknown.value.code == "unknown_url"
    assert "GET /v1/no/such/route" in unknown.value.message
    with pytest.raises(openai.APIStatusError) as wrong_method:
        client.put("/fine_tuning/jobs", cast_to=object, body={})
    assert wrong_method.value.status_code == 405
    assert wrong_method.value.code == "method_not_allowed"
    assert "PUT is not allowed" in wrong_method.value.message
    assert wrong_method.value.response.headers["allow"]


def test_openai_endpoints_tunery_does_not_serve_say_what_to_use(api_server, sdk):
    client = sdk(api_server)
    for call in (
        client.webhooks.list,
        lambda: client.webhooks.create(
            url="https://example.com/hook",
            name="jobs",
            event_types=["fine_tuning.job.succeeded"],
        ),
        lambda: client.webhooks.delete("we_1"),
    ):
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert "/api/v1/webhooks" in refused.value.message
    with pytest.raises(openai.NotFoundError) as permissions:
        client.fine_tuning.checkpoints.permissions.list("ft:tunery/demo-tiny:x:y:run_1")
    assert "checkpoint permissions are not available" in permissions.value.message


def test_deleting_an_unknown_model_is_a_404_naming_it(api_server, sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(api_server).models.delete("ft:tunery/demo-tiny:acct:x:run_nope")
    assert missing.value.param == "model"


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_a_bad_key_is_invalid_api_key_whatever_the_method(api_server, sdk, method):
    client = sdk(api_server, "tny_not-a-token")
    calls = {
        "get": lambda: client.fine_tuning.jobs.list(),
        "post": lambda: client.fine_tuning.jobs.cancel("run_x"),
        "delete": lambda: client.files.delete("ds_x"),
    }
    with pytest.raises(openai.AuthenticationError) as refused:
        calls[method]()
    assert refused.value.code == "invalid_api_key"


def test_every_answer_has_a_request_id_that_the_server_log_names(api_server, sdk):
    client = sdk(api_server)
    page = client.fine_tuning.jobs.list(limit=1)
    assert page._request_id and page._request_id.startswith("req_")
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("run_nope")
    failed_id = missing.value.request_id
    assert failed_id and failed_id != page._request_id
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(api_server, "tny_bad").files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
    guard_id = refused.value.request_id  # refused by the body guard, before any route
    assert guard_id and guard_id.startswith("req_")
    lines = [
        f"{page._request_id} GET /v1/fine_tuning/jobs 200",
        f"{failed_id} GET /v1/fine_tuning/jobs/run_nope 404",
        f"{guard_id} POST /v1/files 401",
    ]
    # Each line is written as its answer ends, a moment after the client has it.
    wait_until(lambda: all(line in api_server.log() for line in lines), timeout=10)


def test_wandb_is_refused_clearly_where_the_server_has_none(api_server, sdk, training_file):
    client = sdk(api_server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=training_file,
            integrations=[{"type": "wandb", "wandb": {"project": "support-bot"}}],
        )
    assert refused.value.param == "integrations.0.type"
    assert "W&B is not configured on this server" in refused.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.fine_tuning.jobs.create(
            model="tunery/demo-tiny",
            training_file=training_file,
            integrations=[{"type": "mlflow"}],  # type: ignore[list-item]
        )
    assert unknown.value.param.startswith("integrations.0")


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ([{"type": "wandb", "wandb": {"project": "a/b"}}], "integrations.0.wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "x" * 129}}], "integrations.0.wandb.project"),
        ([{"type": "wandb"}], "integrations.0.wandb"),
        ([{"type": "wandb", "wandb": {"project": "p", "secret": 1}}], "integrations.0.wandb"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": [""]}}], "integrations.0.wandb"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["t"] * 51}}], "integrations.0"),
        ([{"type": "wandb", "wandb": {"project": "p"}}] * 2, "integrations"),
        ("wandb", "integrations"),
    ],
)
def test_bad_integrations_name_their_field(api_server, sdk, training_file, integrations, param):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(api_server).fine_tuning.jobs.create(
            model="tunery/demo-tiny", training_file=training_file, integrations=integrations
        )
    assert refused.value.param.startswith(param), refused.value.message
