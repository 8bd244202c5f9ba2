"""The Hub: artifacts of finished runs, kept until deleted, behind signed download links."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunery.hub.storage import LocalStorage, Storage

if TYPE_CHECKING:
    from tunery.settings import Settings


def open_storage(settings: Settings) -> Storage:
    """The store ``settings.storage`` names; boto3 is imported only for ``kind: s3``."""
    if settings.storage.kind == "s3":
        from tunery.hub.s3 import S3Storage

        return S3Storage.from_settings(settings.storage)
    return LocalStorage(settings.data_dir / "hub")
