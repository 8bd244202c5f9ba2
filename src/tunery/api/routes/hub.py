"""The Hub: entries, signed download URLs, and the download itself (signature, no token)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from tunery.api.deps import AccountDep, PlaneDep
from tunery.hub import signing
from tunery.hub.storage import ARTIFACTS, PresignedUrl
from tunery.runs import hub
from tunery.runs.plane import NotFound
from tunery.wire.rest import HubEntryPublic, SignedUrl

router = APIRouter(tags=["hub"])


@router.get("/api/v1/hub", response_model=list[HubEntryPublic])
def list_entries(plane: PlaneDep, account: AccountDep) -> list[HubEntryPublic]:
    return hub.list_entries(plane, account.id)


@router.get("/api/v1/hub/{entry_id}", response_model=HubEntryPublic)
def get_entry(plane: PlaneDep, account: AccountDep, entry_id: str) -> HubEntryPublic:
    return hub.entry_view(hub.find_entry(plane, account.id, entry_id))


@router.delete("/api/v1/hub/{entry_id}", status_code=204)
def delete_entry(plane: PlaneDep, account: AccountDep, entry_id: str) -> None:
    hub.delete_entry(plane, account_id=account.id, entry_id=entry_id)


@router.post("/api/v1/hub/{entry_id}/artifacts/{artifact}/url", response_model=SignedUrl)
def mint_url(
    request: Request,
    plane: PlaneDep,
    account: AccountDep,
    entry_id: str,
    artifact: str,
    lifetime: Annotated[int, Query(ge=1, le=signing.MAX_LIFETIME)] = signing.DEFAULT_LIFETIME,
) -> SignedUrl:
    """A fresh signed URL valid for ``lifetime`` seconds; each call mints a new one.

    With S3 storage it is the store's own presigned URL; with local storage, this server's
    ``/hub/download`` URL.
    """
    entry = hub.find_entry(plane, account.id, entry_id)
    if artifact not in ARTIFACTS or artifact not in entry.artifacts:
        raise NotFound(f"Hub entry {entry_id} has no {artifact!r} artifact")
    source = plane.storage.download_source(
        entry_id, artifact, filename=entry.artifacts[artifact]["filename"], lifetime=lifetime
    )
    if isinstance(source, PresignedUrl):
        return SignedUrl(url=source.url, expires_at=source.expires_at)
    query, expires = signing.sign(
        request.app.state.secret,
        account_id=account.id,
        entry_id=entry_id,
        artifact=artifact,
        lifetime=lifetime,
    )
    base = str(request.base_url).rstrip("/")
    return SignedUrl(url=f"{base}/hub/download/{entry_id}/{artifact}?{query}", expires_at=expires)


@router.get(
    "/hub/download/{entry_id}/{artifact}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "The artifact ZIP"},
        307: {"description": "Redirect to the store's presigned URL"},
    },
)
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
    entry = hub.find_entry(plane, account, entry_id)
    if artifact not in entry.artifacts:
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
