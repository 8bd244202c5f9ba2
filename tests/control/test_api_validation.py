"""Bad input at every entry point: 422 with every reason, and nothing created."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from control_harness import Client, Server, payload, wait_until


@pytest.fixture(scope="module")
def api(shared_server: Server) -> Client:
    client = Client(shared_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def dataset_id(api: Client, demo_dataset: Path) -> str:
    return api.dataset(demo_dataset)


def problems(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == "invalid_config"
    found = [(p["field"], p["message"]) for p in detail["problems"]]
    assert found, detail
    for field, message in found:
        assert field and message, detail
    return found


def fields(response: Any) -> set[str]:
    return {field for field, _ in problems(response)}


def assert_nothing_created(server: Server, api: Client) -> None:
    assert api.runs() == []
    assert server.query("SELECT id FROM runs") == []
    assert server.query("SELECT id FROM run_events") == []
    assert server.query("SELECT id FROM attempts") == []
    assert api.nodes_free() == 1


def test_valid_payload_shape_is_accepted_by_validation(api: Client, dataset_id: str) -> None:
    """Control: the payload these tests break is itself valid (checked without submitting)."""
    from tunery.pipeline.config import parse_recipe

    parse_recipe(payload(dataset_id))


def test_missing_attestations(shared_server: Server, api: Client, dataset_id: str) -> None:
    both = {"attestations.dataset_rights", "attestations.model_license"}
    for attestations in ({}, {"dataset_rights": False, "model_license": False}, None):
        body = payload(dataset_id)
        body["attestations"] = attestations
        if attestations is None:
            del body["attestations"]
        assert fields(api.submit(body)) == both
    only_rights = api.submit(payload(dataset_id, attestations={"model_license": False}))
    assert fields(only_rights) == {"attestations.model_license"}
    assert_nothing_created(shared_server, api)


def test_unknown_dataset_ids(shared_server: Server, api: Client, dataset_id: str) -> None:
    response = api.submit(payload(dataset_id, dataset_ids=[dataset_id, "ds_nope", "ds_gone"]))
    found = problems(response)
    assert {field for field, _ in found} == {"dataset_ids.1", "dataset_ids.2"}
    assert any("ds_nope" in message for _, message in found)
    empty = problems(api.submit(payload(dataset_id, dataset_ids=[])))
    assert empty and all("data" in message for _, message in empty), empty
    assert_nothing_created(shared_server, api)


@pytest.mark.parametrize("route", ["/runs", "/runs/estimate"])
def test_dataset_lists_are_capped_before_any_lookup(
    shared_server: Server, api: Client, dataset_id: str, route: str
) -> None:
    # As many ids as fit the JSON body cap (1 MiB): one problem per list, not per id.
    body = payload(dataset_id, dataset_ids=["x"] * 200_000, validation={"dataset_ids": ["x"] * 65})
    response = api.http.post(route, json=body)
    assert response.status_code == 422, response.text[:500]
    assert len(response.content) < 10_000
    assert {field for field, _ in problems(response)} == {
        "dataset_ids",
        "validation.dataset_ids",
    }
    assert_nothing_created(shared_server, api)


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"learning_rate": 0}, "training.learning_rate"),
        ({"learning_rate": "fast"}, "training.learning_rate"),
        ({"batch_size": 0}, "training.batch_size"),
        ({"epochs": -1}, "training.epochs"),
        ({"max_steps": -5}, "training.max_steps"),
        ({"lr_scheduler": "sawtooth"}, "training.lr_scheduler"),
        ({"warmup_ratio": 1.5}, "training.warmup_ratio"),
        ({"max_seq_length": 4}, "training.max_seq_length"),
        ({"mixed_precision": "fp8"}, "training.mixed_precision"),
        ({"momentum": 0.9}, "training.momentum"),
    ],
)
def test_invalid_hyperparameters(
    shared_server: Server, api: Client, dataset_id: str, training: dict, field: str
) -> None:
    assert fields(api.submit(payload(dataset_id, training=training))) == {field}
    assert_nothing_created(shared_server, api)


def test_every_invalid_hyperparameter_is_reported_at_once(
    shared_server: Server, api: Client, dataset_id: str
) -> None:
    body = payload(
        dataset_id,
        training={"learning_rate": -1, "batch_size": 0, "lr_scheduler": "x"},
        lora={"rank": 0, "dropout": 1.0},
        export={"quantization": "Q8_0"},
        name="bad name with spaces",
    )
    assert fields(api.submit(body)) == {
        "training.learning_rate",
        "training.batch_size",
        "training.lr_scheduler",
        "lora.rank",
        "lora.dropout",
        "export.quantization",
        "name",
    }
    assert_nothing_created(shared_server, api)


def test_local_dataset_paths_are_refused(
    shared_server: Server, api: Client, dataset_id: str, demo_dataset: Path
) -> None:
    """The server takes uploaded ids; a recipe's local paths must be uploaded first."""
    body = payload(dataset_id, datasets=[str(demo_dataset)], dataset_ids=[])
    found = problems(api.submit(body))
    assert {field for field, _ in found} == {"datasets", "dataset_ids"}
    assert_nothing_created(shared_server, api)


def test_unknown_tier(shared_server: Server, api: Client, dataset_id: str) -> None:
    found = problems(api.submit(payload(dataset_id, gpu_tier="a100-80gb")))
    assert [field for field, _ in found] == ["gpu_tier"]
    assert "a100-80gb" in found[0][1] and "cpu" in found[0][1]
    assert_nothing_created(shared_server, api)


@pytest.mark.parametrize(
    "base_model",
    [
        "",
        "   ",
        "not a model",
        "just-a-name",
        "org/name/extra",
        "https://example.com/org/name",
        "https://huggingface.co/only-org",
        "https://huggingface.co/org/name/blob/main/config.json",
        "http://huggingface.co/org/na me",
        "/definitely/not/a/model/dir",
        "./relative-missing-dir",
    ],
)
def test_bad_base_model_reference(
    shared_server: Server, api: Client, dataset_id: str, base_model: str
) -> None:
    assert fields(api.submit(payload(dataset_id, base_model=base_model))) == {"base_model"}
    assert_nothing_created(shared_server, api)


def test_every_reason_is_reported_at_once(
    shared_server: Server, api: Client, dataset_id: str
) -> None:
    """Cross-field checks (datasets, attestations, tier, model) next to a bad hyperparameter.

    The contract: a blocked submission gets "HTTP 422 with every reason". A user who sends
    a bad learning rate and forgot the attestations should hear about both at once.
    """
    body = payload(
        dataset_id,
        dataset_ids=["ds_nope"],
        attestations={"dataset_rights": False, "model_license": False},
        gpu_tier="nope",
        base_model="not a model",
        training={"learning_rate": -1},
    )
    assert fields(api.submit(body)) == {
        "dataset_ids.0",
        "attestations.dataset_rights",
        "attestations.model_license",
        "gpu_tier",
        "base_model",
        "training.learning_rate",
    }
    assert_nothing_created(shared_server, api)


def test_every_cross_field_reason_without_schema_errors(
    shared_server: Server, api: Client, dataset_id: str
) -> None:
    body = payload(
        dataset_id,
        dataset_ids=["ds_nope", dataset_id, "ds_other"],
        attestations={"model_license": False},
        gpu_tier="nope",
        base_model="https://example.com/x",
    )
    assert fields(api.submit(body)) == {
        "dataset_ids.0",
        "dataset_ids.2",
        "attestations.model_license",
        "gpu_tier",
        "base_model",
    }
    assert_nothing_created(shared_server, api)


@pytest.mark.parametrize(
    "body",
    [[], "a string", 42, None, {"name": "x"}],
    ids=["list", "string", "number", "null", "no-model"],
)
def test_payload_that_is_not_a_submission(shared_server: Server, api: Client, body: Any) -> None:
    response = api.http.post(
        "/runs", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert_nothing_created(shared_server, api)


def test_malformed_json_body(shared_server: Server, api: Client) -> None:
    response = api.http.post(
        "/runs", content=b'{"name": "x",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert_nothing_created(shared_server, api)


def test_blocked_submission_with_idempotency_key_does_not_claim_the_key(
    shared_server: Server, api: Client, dataset_id: str
) -> None:
    """A key first used by a rejected submission still creates the run once it is valid."""
    blocked = api.submit(
        payload(dataset_id, attestations={"model_license": False}), key="key-blocked-first"
    )
    assert blocked.status_code == 422
    assert_nothing_created(shared_server, api)
    run = api.submit_ok(payload(dataset_id, name="keyed"), key="key-blocked-first")
    try:
        assert run["status"] in {"queued", "waiting_for_gpu"}
        again = api.submit_ok(payload(dataset_id, name="keyed"), key="key-blocked-first")
        assert again["id"] == run["id"]
    finally:
        api.cancel_ok(run["id"])
    api.wait_terminal(run["id"], timeout=30)
    assert api.http.delete(f"/runs/{run['id']}").status_code == 204
    assert shared_server.attempts(run["id"]) == []  # deleted with the run
    wait_until(lambda: api.nodes_free() == 1, timeout=15, what="the node to be free")


# Dataset uploads ------------------------------------------------------------------


def dataset_problems(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == "invalid_dataset"
    assert detail["problems"], detail
    return detail["problems"]


def stored_files(server: Server) -> set[str]:
    return {path.name for path in (server.root / "datasets").glob("*")}


GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
)


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        (
            "bad-json.jsonl",
            f"{GOOD}\n{GOOD}\n{{not json\n{GOOD}\n".encode(),
            [(3, "invalid JSON")],
        ),
        (
            "bad-utf8.jsonl",
            GOOD.encode() + b"\n" + b'{"text": "caf\xe9"}\n',
            [(2, "UTF-8")],
        ),
        (
            "several.jsonl",
            f"{GOOD}\n[1, 2\n\n{GOOD}\n{{}}\n".encode(),
            [(2, "invalid JSON"), (5, "")],
        ),
        (
            "bad-utf8.csv",
            b"prompt,completion\nhello,world\nbad,caf\xe9\n",
            [(3, "UTF-8")],
        ),
        ("empty.jsonl", b"", [(None, "empty")]),
        ("notes.txt", b"hello\n", [(None, "unsupported file type")]),
        ("noext", GOOD.encode(), [(None, "unsupported file type")]),
    ],
    ids=["json", "utf8", "several", "csv-utf8", "empty", "txt", "no-suffix"],
)
def test_invalid_dataset_upload(
    shared_server: Server,
    api: Client,
    filename: str,
    content: bytes,
    expected: list[tuple[int | None, str]],
) -> None:
    before = api.http.get("/datasets").json()
    files = stored_files(shared_server)
    found = dataset_problems(api.upload_bytes(filename, content))
    assert [(p["line"], p["file"]) for p in found] == [(line, filename) for line, _ in expected]
    for problem, (_, text) in zip(found, expected, strict=True):
        assert text.lower() in problem["message"].lower(), problem
        if problem["line"] is not None:
            assert problem["unit"] == "line"
    assert api.http.get("/datasets").json() == before
    stored_ids = {row["id"] for row in shared_server.query("SELECT id FROM datasets")}
    assert stored_ids == {d["id"] for d in before}
    assert stored_files(shared_server) == files  # no partial upload left behind


def test_valid_upload_then_get_and_delete(api: Client, demo_dataset: Path) -> None:
    response = api.upload(demo_dataset, name="demo")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ds_")
    assert (body["name"], body["format"], body["rows"]) == ("demo", "messages", 400)
    assert body["bytes"] == demo_dataset.stat().st_size
    assert api.http.get(f"/datasets/{body['id']}").json() == body
    assert api.http.delete(f"/datasets/{body['id']}").status_code == 204
    assert api.http.get(f"/datasets/{body['id']}").status_code == 404
