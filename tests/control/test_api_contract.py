"""The API's self-description, in process: ``/api/v1/meta``, ``/openapi.json``, typed events.

The app runs with the in-memory backend and no scheduler thread; nothing is trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tunery.api.app import create_app
from tunery.backends.fake import FakeBackend
from tunery.db import RunEvent
from tunery.lifecycle import RunStatus
from tunery.phases import PHASE_DESCRIPTIONS
from tunery.runs import history
from tunery.server import ensure_admin
from tunery.settings import Settings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    settings = Settings.load(tmp_path)
    token = ensure_admin(settings)
    app = create_app(
        settings,
        server_url="http://test",
        backend=FakeBackend.for_settings(settings),
        run_scheduler=False,
    )
    with TestClient(app) as client:
        yield client, token


def test_meta_lists_the_vocabularies_without_a_token(api) -> None:
    client, _ = api
    meta = client.get("/api/v1/meta").json()
    assert [s["id"] for s in meta["statuses"]] == [status.value for status in RunStatus]
    training = next(s for s in meta["statuses"] if s["id"] == "training")
    assert training == {
        "id": "training",
        "label": "Training",
        "icon": "spinner",
        "phase_labels": {},
        "label_without_gpu": None,
        "terminal": False,
        "active": True,
        "cancellable": True,
        "finishable": True,
        "shows_error": False,
        "outcome": None,
        "pausable": True,
        "resumable": False,
    }
    # What the server allows is what the studio offers: Finish now while training or
    # retrying, Cancel until a run is finished.
    assert [s["id"] for s in meta["statuses"] if s["finishable"]] == ["training", "retrying"]
    assert all(s["cancellable"] != s["terminal"] for s in meta["statuses"])
    waiting = next(s for s in meta["statuses"] if s["id"] == "waiting_for_gpu")
    assert waiting["phase_labels"]["loading_model"] == "Loading model"
    assert waiting["label_without_gpu"] == "Waiting for a node"
    assert {s["id"] for s in meta["statuses"] if s["terminal"]} == {
        "completed",
        "failed",
        "cancelled",
    }
    assert [p["id"] for p in meta["phases"]] == [phase.value for phase in PHASE_DESCRIPTIONS]
    assert {"status", "phase", "metrics", "log", "samples", "snapshot"} <= set(meta["event_kinds"])
    assert any("out of credits" in rule for rule in meta["refund_rules"])
    assert (
        meta["automatic_validation"] == "5% of the rows (at most 500) of data with 200 rows or more"
    )


def test_every_json_answer_has_a_schema(api) -> None:
    client, _ = api
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json")
                if code == "204" or content is None:
                    continue
                assert content.get("schema"), (method, path, code)
    submit = schema["paths"]["/api/v1/runs"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/RunRecipe"
    components = schema["components"]["schemas"]
    assert {"RunRecipe", "TrainingConfig", "RunPublic", "ErrorResponse", "Meta"} <= set(components)
    assert {"refunded", "refund_note"} <= set(components["RunPublic"]["properties"])


def test_a_blocked_submission_still_lists_every_problem(api) -> None:
    client, token = api
    response = client.post(
        "/api/v1/runs", json={"name": 3}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 422
    fields = [problem["field"] for problem in response.json()["detail"]["problems"]]
    assert {"name", "base_model", "dataset_ids", "attestations.dataset_rights"} <= set(fields)


def test_log_events_carry_the_line_the_log_shows() -> None:
    status = RunEvent(
        id=7,
        run_id="run_1",
        kind="status",
        data={"status": "failed", "phase": "done", "error": {"code": "x", "message": "boom"}},
        created_at=0.0,
    )
    payload = history.event_payload(status, with_run_id=True)
    assert payload.line == "1970-01-01T00:00:00Z status: failed (done) — boom"
    assert (payload.run_id, payload.kind, payload.id) == ("run_1", "status", 7)
    # Each step is a line of the log too (the download has the training lines); samples
    # and annotations are not.
    metrics = RunEvent(
        id=8, run_id="run_1", kind="metrics", data={"step": 2, "loss": 1.5}, created_at=0.0
    )
    assert history.event_payload(metrics).line == "1970-01-01T00:00:00Z step 2 · loss 1.5000"
    samples = RunEvent(id=9, run_id="run_1", kind="samples", data={"samples": []}, created_at=0.0)
    assert not hasattr(history.event_payload(samples), "line")
