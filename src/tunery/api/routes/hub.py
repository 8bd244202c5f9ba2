"""The Hub: entries, signed download URLs, and the download itself (signature, no token)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select

from tunery.api.deps import AccountDep, PlaneDep
from tunery.api.timefmt import iso
from tunery.db import HubEntry
from tunery.hub import signing
from tunery.hub.storage import ARTIFACTS, PresignedUrl
from tunery.runs.service import NotFound

router = APIRouter(tags=["hub"])


def entry_public(entry: HubEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "run_id": entry.run_id,
        "base_model": entry.base_model,
        "artifacts": entry.artifacts,
        "created_at": iso(entry.created_at),
    }


def _owned(session: Any, account_id: str, entry_id: str) -> HubEntry:
    entry = session.scalar(
        select(HubEntry).where(HubEntry.id == entry_id, HubEntry.account_id == account_id)
    )
    if entry is None:
        raise NotFound(f"no Hub entry {entry_id!r}")
    return entry


@router.get("/api/v1/hub")
def list_entries(plane: PlaneDep, account: AccountDep) -> list[dict[str, Any]]:
    with plane.sessions() as session:
        rows = session.scalars(
            select(HubEntry)
            .where(HubEntry.account_id == account.id)
            .order_by(HubEntry.created_at.desc())
        )
        return [entry_public(entry) for entry in rows]


@router.get("/api/v1/hub/{entry_id}")
def get_entry(plane: PlaneDep, account: AccountDep, entry_id: str) -> dict[str, Any]:
    with plane.sessions() as session:
        return entry_public(_owned(session, account.id, entry_id))


@router.delete("/api/v1/hub/{entry_id}", status_code=204)
def delete_entry(plane: PlaneDep, account: AccountDep, entry_id: str) -> None:
    with plane.sessions.begin() as session:
        entry = _owned(session, account.id, entry_id)
        session.delete(entry)
    plane.storage.delete(entry_id)


@router.post("/api/v1/hub/{entry_id}/artifacts/{artifact}/url")
def mint_url(
    request: Request,
    plane: PlaneDep,
    account: AccountDep,
    entry_id: str,
    artifact: str,
    lifetime: Annotated[int, Query(ge=1, le=signing.MAX_LIFETIME)] = signing.DEFAULT_LIFETIME,
) -> dict[str, Any]:
    """A fresh signed URL valid for ``lifetime`` seconds; each call mints a new one.

    With S3 storage it is the store's own presigned URL; with local storage, this server's
    ``/hub/download`` URL.
    """
    with plane.sessions() as session:
        entry = _owned(session, account.id, entry_id)
    if artifact not in ARTIFACTS or artifact not in entry.artifacts:
        raise NotFound(f"Hub entry {entry_id} has no {artifact!r} artifact")
    source = plane.storage.download_source(
        entry_id, artifact, filename=entry.artifacts[artifact]["filename"], lifetime=lifetime
    )
    if isinstance(source, PresignedUrl):
        return {"url": source.url, "expires_at": source.expires_at}
    query, expires = signing.sign(
        request.app.state.secret,
        account_id=account.id,
        entry_id=entry_id,
        artifact=artifact,
        lifetime=lifetime,
    )
    base = str(request.base_url).rstrip("/")
    return {"url": f"{base}/hub/download/{entry_id}/{artifact}?{query}", "expires_at": expires}


@router.get("/hub/download/{entry_id}/{artifact}")
def download(
    request: Request,
    plane: PlaneDep,
    entry_id: str,
    artifact: str,
    account: Annotated[str, Query()] = "",
    expires: Annotated[str, Query()] = "",
    nonce: Annotated[str, Query()] = "",
    signature: Annotated[str, Query()] = "",
) -> Response:
    """Stream an artifact to whoever holds a valid signed URL; 403 if tampered or expired.

    With S3 storage the mint route hands out the store's own URLs and nothing is streamed
    from here: a valid URL of this route is still honoured, by a redirect to a presigned URL
    of the store that expires no later than it.
    """
    if not signing.verify(
        request.app.state.secret,
        account_id=account,
        entry_id=entry_id,
        artifact=artifact,
        expires=expires,
        nonce=nonce,
        signature=signature,
    ):
        raise HTTPException(
            status_code=403,
            detail={
                "code": "forbidden",
                "message": "the download link is invalid or has expired",
                "hint": "ask for a fresh link",
            },
        )
    with plane.sessions() as session:
        entry = session.scalar(
            select(HubEntry).where(HubEntry.id == entry_id, HubEntry.account_id == account)
        )
    if entry is None or artifact not in entry.artifacts:
        raise NotFound(f"no {artifact} artifact in Hub entry {entry_id}")
    info = entry.artifacts[artifact]
    source = plane.storage.download_source(
        entry_id,
        artifact,
        filename=info["filename"],
        lifetime=int(expires) - int(time.time()),
    )
    if isinstance(source, PresignedUrl):
        return RedirectResponse(source.url, status_code=307)
    return FileResponse(
        source,
        media_type="application/zip",
        filename=info["filename"],
        headers={"X-Checksum-SHA256": info["sha256"]},
    )
