"""Hub artifacts in an S3-compatible bucket: AWS S3, MinIO, Ceph, R2, SeaweedFS...

Objects are ``PREFIX/ENTRY_ID/ARTIFACT.zip``, with their SHA-256 as the ``sha256`` user
metadata (``x-amz-meta-sha256`` on a download). Downloads are SigV4 presigned GET URLs: the
store itself checks signature and expiry, and names the saved file through the signed
``response-content-disposition``. boto3 is imported only here, so a control plane with
local storage runs without it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tunery.errors import ConfigError, TuneryError
from tunery.hub.signing import MAX_LIFETIME
from tunery.hub.storage import PresignedUrl, StoredFile, check_names, file_sha256

if TYPE_CHECKING:
    from tunery.settings import StorageSettings

INSTALL_HINT = "pip install 'tunery[s3]'"
CREDENTIALS_HINT = (
    "set storage.access_key_id and storage.secret_access_key in tunery.yaml, or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment"
)


class StorageError(TuneryError):
    """The object store refused a request or could not be reached."""

    code = "storage_error"


def content_disposition(filename: str) -> str:
    """``attachment`` with the file name, percent-encoded (RFC 6266) when not plain ASCII."""
    quoted = quote(filename)
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"


class S3Storage:
    """Objects under ``prefix`` (empty, or ending in ``/``) in ``bucket``, through ``client``.

    ``client`` is a boto3 S3 client; ``from_settings`` builds one from ``storage:`` settings.
    """

    def __init__(self, client: Any, *, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> S3Storage:
        """Raises ConfigError when boto3 is missing or no credentials can be found."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError.single(
                "storage.kind", "kind s3 needs boto3, which is not installed", hint=INSTALL_HINT
            ) from None
        assert settings.bucket is not None  # validated: required with kind s3
        secret = settings.secret_access_key
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.region,
        )
        if session.get_credentials() is None:
            raise ConfigError.single(
                "storage.access_key_id", "no S3 credentials found", hint=CREDENTIALS_HINT
            )
        aws = settings.endpoint_url is None
        config = Config(
            signature_version="s3v4",
            # Other stores are addressed by path: no wildcard DNS, bucket names with dots work.
            s3={"addressing_style": "auto" if aws else "path"},
            # boto3 >= 1.36 adds CRC checksum headers to uploads by default, which many
            # S3-compatible stores reject; AWS itself keeps the stronger default.
            request_checksum_calculation="when_supported" if aws else "when_required",
            response_checksum_validation="when_supported" if aws else "when_required",
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard"},
        )
        client = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
        return cls(client, bucket=settings.bucket, prefix=settings.prefix)

    def folder(self, entry_id: str) -> str:
        """The key prefix of every object of the entry (ends in ``/``)."""
        check_names(entry_id)
        return f"{self.prefix}{entry_id}/"

    def key(self, entry_id: str, artifact: str) -> str:
        check_names(entry_id, artifact)
        return f"{self.folder(entry_id)}{artifact}.zip"

    def put(self, entry_id: str, artifact: str, source: Path) -> StoredFile:
        """Upload ``source`` and leave it in place, so a retried report can upload it again.

        The SHA-256 is computed before the upload: S3 takes user metadata with the request
        that starts an upload, ahead of the body.
        """
        key = self.key(entry_id, artifact)
        sha256 = file_sha256(source)
        with self._errors("upload", key):
            self.client.upload_file(
                str(source),
                self.bucket,
                key,
                ExtraArgs={"ContentType": "application/zip", "Metadata": {"sha256": sha256}},
            )
        return StoredFile(filename=source.name, size=source.stat().st_size, sha256=sha256)

    def delete(self, entry_id: str) -> None:
        folder = self.folder(entry_id)
        with self._errors("delete", folder):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            # One request per object: an entry holds at most two, and the checksum header
            # that DeleteObjects requires is one S3-compatible stores disagree on.
            for page in pages:
                for item in page.get("Contents", []):
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def download_source(
        self, entry_id: str, artifact: str, *, filename: str, lifetime: int
    ) -> PresignedUrl:
        """A presigned GET URL; signing is local, the store is not asked."""
        key = self.key(entry_id, artifact)
        lifetime = max(1, min(lifetime, MAX_LIFETIME))
        # The URL's own clock starts at signing, no earlier than this, so the store accepts
        # it at least until the expiry we report.
        signed_at = int(time.time())
        with self._errors("presign", key):
            url = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                    "ResponseContentType": "application/zip",
                },
                ExpiresIn=lifetime,
            )
        return PresignedUrl(url=url, expires_at=signed_at + lifetime)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn boto3's exceptions into a StorageError naming the bucket and key."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{key}"
        try:
            yield
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "unknown")
            raise StorageError(
                f"could not {action} {where}: the store answered {code}",
                hint="check storage.bucket and what the credentials may do",
            ) from error
        except (BotoCoreError, Boto3Error) as error:
            raise StorageError(
                f"could not {action} {where}: {error}",
                hint="check storage.endpoint_url and that the store is running",
            ) from error
