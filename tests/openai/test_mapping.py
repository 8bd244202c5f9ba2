"""The OpenAI mapping and webhook signing, without a server."""

from __future__ import annotations

import base64
import json
import time

import pytest

import openai
from tunery.errors import FieldProblem
from tunery.openai_api import mapping
from tunery.openai_api.objects import OpenAIError
from tunery.webhooks.signing import new_secret, secret_key, signed_headers
from tunery.wire import model_names


def test_hyperparameters_map_onto_the_recipe():
    requested = mapping.requested_method(
        {
            "method": {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": 2,
                        "batch_size": "auto",
                        "learning_rate_multiplier": 0.5,
                    }
                },
            }
        }
    )
    where = requested.where
    assert (requested.type, where) == ("supervised", "method.supervised.hyperparameters")
    assert mapping.method_overrides(requested) == {}
    training = mapping.training_overrides(requested.hyperparameters, where)
    assert training == {"epochs": 2, "learning_rate": 0.5 * mapping.BASE_LEARNING_RATE}
    resolved = mapping.resolved_hyperparameters({"training": {"epochs": 2, **training}})
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate_multiplier) == (
        2,
        8,
        0.5,
    )


@pytest.mark.parametrize("value", [0, -1, True, "3", 1.5, float("nan")])
def test_bad_epochs_name_their_param(value):
    with pytest.raises(OpenAIError) as caught:
        mapping.training_overrides({"n_epochs": value}, "hyperparameters")
    assert caught.value.param == "hyperparameters.n_epochs" and caught.value.status == 400


def test_both_forms_at_once_and_other_methods_are_refused():
    with pytest.raises(OpenAIError) as caught:
        mapping.requested_method({"method": {"type": "supervised"}, "hyperparameters": {}})
    assert caught.value.param == "hyperparameters"
    with pytest.raises(OpenAIError) as caught:
        mapping.requested_method({"method": {"type": "reinforcement"}})
    assert (caught.value.param, caught.value.code) == ("method.type", "unsupported_method")
    with pytest.raises(OpenAIError) as caught:
        mapping.requested_method(
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}}
        )
    assert caught.value.param == "method.supervised.hyperparameters.beta"


def test_dpo_maps_onto_the_recipe_method():
    requested = mapping.requested_method(
        {
            "method": {
                "type": "dpo",
                "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 1, "batch_size": "auto"}},
            }
        }
    )
    assert (requested.type, requested.where) == ("dpo", "method.dpo.hyperparameters")
    assert mapping.method_overrides(requested) == {"type": "dpo", "beta": 0.25}
    assert mapping.training_overrides(requested.hyperparameters, requested.where) == {"epochs": 1}
    auto = mapping.requested_method(
        {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}}
    )
    assert mapping.method_overrides(auto) == {"type": "dpo"}
    assert mapping.method_overrides(mapping.requested_method({"method": {"type": "dpo"}})) == {
        "type": "dpo"
    }
    for bad in (0, -0.1, 11, "0.1", True, float("inf")):
        with pytest.raises(OpenAIError) as caught:
            mapping.method_overrides(
                mapping.RequestedMethod("dpo", {"beta": bad}, "method.dpo.hyperparameters")
            )
        assert caught.value.param == "method.dpo.hyperparameters.beta"
    shown = mapping.method_object({"training": {}, "method": {"type": "dpo", "beta": 0.25}})
    assert shown.type == "dpo" and shown.supervised is None
    assert shown.dpo.hyperparameters.beta == 0.25
    assert mapping.method_object({"training": {}}).supervised is not None
    assert mapping.started_from({"base_model": "m", "init_from": "run_1"}) == "run_1"
    assert mapping.started_from({"base_model": "m"}) == "m"


def test_recipe_problems_are_named_in_the_request_terms():
    at = "method.supervised.hyperparameters"
    assert mapping.param_for(FieldProblem("training.epochs", "x"), at) == f"{at}.n_epochs"
    assert mapping.param_for(FieldProblem("base_model", "x"), at) == "model"
    assert mapping.param_for(FieldProblem("dataset_ids.0", "x"), at) == "training_file"
    assert mapping.param_for(FieldProblem("lora.rank", "x"), at) == "tunery.lora.rank"
    assert mapping.param_for(FieldProblem("init_from", "x"), at) == "model"
    assert mapping.param_for(FieldProblem("method.beta", "x"), at) == f"{at}.beta"


def test_statuses_and_model_names():
    assert [
        mapping.job_status(s) for s in ("waiting_for_gpu", "retrying", "paused", "completed")
    ] == ["queued", "running", "paused", "succeeded"]
    # While its worker reads and checks the files, a job is validating them.
    assert mapping.job_status("waiting_for_gpu", "preparing_data") == "validating_files"
    assert mapping.job_status("waiting_for_gpu", "loading_model") == "queued"
    name = model_names.fine_tuned_model_name("org/model", "acc_1", "bot", "run_1")
    assert name == "ft:org/model:acc_1:bot:run_1"
    assert model_names.run_id_of_model(name) == model_names.run_id_of_model("run_1") == "run_1"


def test_metadata_filters_and_checks():
    wanted = mapping.query_metadata([("metadata[team]", "a"), ("limit", "2")])
    assert wanted == {"team": "a"}
    assert mapping.metadata_matches({"team": "a", "x": "y"}, wanted)
    assert not mapping.metadata_matches(None, wanted)
    assert mapping.metadata_matches(None, mapping.query_metadata([("metadata", "null")]))
    with pytest.raises(OpenAIError) as caught:
        mapping.check_metadata({"k": 1})
    assert caught.value.param == "metadata.k"


def test_checkpoints_and_the_results_csv():
    rows = [{"step": step, "loss": 1.0 / step} for step in range(1, 8)]
    assert mapping.checkpoint_steps(rows, 3, completed=True) == [3, 6, 7]
    assert mapping.checkpoint_steps(rows, 3, completed=False) == [3, 6]
    evaluated = {**rows[1], "accuracy": 0.5, "eval_loss": 0.25, "eval_accuracy": 0.75}
    lines = mapping.metrics_csv([rows[0], evaluated]).splitlines()
    assert lines == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,1,,,",
        "2,0.5,0.5,0.25,0.75",
    ]
    numbers = mapping.checkpoint_metrics(evaluated)
    assert (numbers.valid_loss, numbers.full_valid_loss) == (0.25, 0.25)
    assert (numbers.train_mean_token_accuracy, numbers.full_valid_mean_token_accuracy) == (
        0.5,
        0.75,
    )
    assert mapping.checkpoint_metrics(rows[0]).valid_loss is None
    evaluation = {"step": 2, "total_steps": 7, "eval_loss": 0.25, "eval_accuracy": 0.75}
    assert mapping.evaluation_data(evaluation) == {
        "step": 2,
        "total_steps": 7,
        "valid_loss": 0.25,
        "valid_mean_token_accuracy": 0.75,
    }
    assert mapping.event_message("evaluation", evaluation) == "Step 2/7: validation loss=0.2500"


def test_signatures_verify_with_the_sdk():
    secret = new_secret()
    assert len(secret_key(secret)) == 32
    body = json.dumps(
        {
            "id": "evt_1",
            "object": "event",
            "created_at": 1,
            "type": "fine_tuning.job.succeeded",
            "data": {"id": "run_1"},
        }
    )
    headers = signed_headers(secret, "evt_1", int(time.time()), body)
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == "run_1"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body + " ", headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=new_secret())


@pytest.mark.parametrize(
    "secret", ["abc", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_weak_or_malformed_secrets_are_refused(secret):
    with pytest.raises(ValueError):
        secret_key(secret)
