"""An app on the in-memory backend, in this process: an admin client and the plane that
drives it (the ``studio``, ``dataset_id`` and ``cli`` fixtures of ``conftest``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from tunery.db import Run
from tunery.runs.plane import ControlPlane

API = "/api/v1"


class Studio:
    def __init__(self, http: TestClient, plane: ControlPlane, token: str) -> None:
        self.http, self.plane = http, plane
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any = None) -> Any:
        return self.http.post(f"{API}{path}", json=body, headers=self.auth)

    def get(self, path: str) -> Any:
        return self.http.get(f"{API}{path}", headers=self.auth)

    def dataset(self, path: Path) -> str:
        with path.open("rb") as file:
            response = self.http.post(
                f"{API}/datasets", files={"file": (path.name, file)}, headers=self.auth
            )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def runs_in_database(self) -> list[Run]:
        with self.plane.sessions() as session:
            return list(session.scalars(select(Run)))
