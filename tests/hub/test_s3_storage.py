"""S3 Hub storage against a real S3-compatible store over HTTP, and its settings.

The store is SeaweedFS on a loopback port (``tests/s3_store.py``), not an in-process fake:
it checks SigV4 signatures and the expiry of presigned URLs itself, so every 403 below is
the store's own answer. Each test keeps to a key prefix of its own in the shared bucket.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
import yaml

from tunery.errors import ConfigError
from tunery.hub.s3 import INSTALL_HINT, S3Storage, StorageError
from tunery.hub.signing import MAX_LIFETIME
from tunery.hub.storage import LocalStorage, StoredFile
from tunery.runs.plane import ControlPlane
from tunery.runs.store import EventNotifier
from tunery.settings import Settings, StorageSettings

MULTIPART_SIZE = 9 * 2**20  # over boto3's 8 MiB threshold: a multipart upload


@pytest.fixture
def prefix() -> str:
    return f"t-{secrets.token_hex(4)}/"


@pytest.fixture
def storage(s3_store, prefix) -> S3Storage:
    return S3Storage.from_settings(StorageSettings(**s3_store.settings(prefix=prefix)))


def artifact(tmp_path: Path, name: str = "run-7-lora.zip", size: int = 4096) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def with_query(url: str, **changes: str) -> str:
    """``url`` with query parameters replaced (the rest re-encoded, keeping its meaning)."""
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return parts._replace(query=urlencode(query)).geturl()


# Upload, presigned download, delete --------------------------------------------------


@pytest.mark.parametrize("size", [4096, MULTIPART_SIZE])
def test_an_upload_downloads_through_its_presigned_url(storage, s3_store, prefix, tmp_path, size):
    source = artifact(tmp_path, size=size)
    data = source.read_bytes()
    stored = storage.put("hub_1", "lora", source)
    assert stored == StoredFile("run-7-lora.zip", len(data), hashlib.sha256(data).hexdigest())
    assert source.exists()  # left in place, so a retried report can upload it again
    assert s3_store.keys(prefix) == [f"{prefix}hub_1/lora.zip"]

    before = time.time()
    link = storage.download_source("hub_1", "lora", filename=stored.filename, lifetime=120)
    assert link.url.startswith(f"{s3_store.endpoint_url}/{s3_store.bucket}/{prefix}hub_1/")
    assert before + 119 <= link.expires_at <= time.time() + 120
    response = httpx.get(link.url)  # plain HTTP, no credentials: the signature is the key
    assert response.status_code == 200, response.text
    assert response.content == data
    assert hashlib.sha256(response.content).hexdigest() == stored.sha256
    assert response.headers["x-amz-meta-sha256"] == stored.sha256
    assert response.headers["content-disposition"] == 'attachment; filename="run-7-lora.zip"'
    assert response.headers["content-type"] == "application/zip"


def test_a_non_ascii_file_name_is_percent_encoded(storage, tmp_path):
    storage.put("hub_1", "gguf", artifact(tmp_path))
    link = storage.download_source("hub_1", "gguf", filename="modèle-gguf.zip", lifetime=60)
    response = httpx.get(link.url)
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        "attachment; filename*=utf-8''mod%C3%A8le-gguf.zip"
    )


def test_presigned_urls_expire(storage, tmp_path):
    storage.put("hub_1", "lora", artifact(tmp_path))
    link = storage.download_source("hub_1", "lora", filename="a.zip", lifetime=2)
    assert httpx.get(link.url).status_code == 200
    time.sleep(max(0.0, link.expires_at + 1.5 - time.time()))
    expired = httpx.get(link.url)
    assert expired.status_code == 403
    assert "expired" in expired.text


def test_lifetimes_are_capped(storage):
    week = storage.download_source("hub_1", "lora", filename="a.zip", lifetime=7 * 24 * 3600)
    assert dict(parse_qsl(urlsplit(week.url).query))["X-Amz-Expires"] == str(MAX_LIFETIME)
    assert week.expires_at <= time.time() + MAX_LIFETIME
    none = storage.download_source("hub_1", "lora", filename="a.zip", lifetime=0)
    assert dict(parse_qsl(urlsplit(none.url).query))["X-Amz-Expires"] == "1"


def test_the_store_refuses_tampered_urls(storage, tmp_path):
    for entry_id in ("hub_1", "hub_2"):
        for kind in ("lora", "gguf"):
            storage.put(entry_id, kind, artifact(tmp_path))
    url = storage.download_source("hub_1", "lora", filename="a.zip", lifetime=600).url
    query = dict(parse_qsl(urlsplit(url).query))
    signature = query["X-Amz-Signature"]
    other_signature = signature[:-1] + ("1" if signature[-1] == "0" else "0")
    _key_id, scope = query["X-Amz-Credential"].split("/", 1)
    tampered = {
        "signature": with_query(url, **{"X-Amz-Signature": other_signature}),
        "expiry": with_query(url, **{"X-Amz-Expires": "3600"}),
        "signing time": with_query(url, **{"X-Amz-Date": "20990101T000000Z"}),
        "file name": with_query(url, **{"response-content-disposition": "attachment"}),
        "access key": with_query(url, **{"X-Amz-Credential": f"AKOTHERKEY000000/{scope}"}),
        # Objects that exist: the store refuses the signature, it does not just miss a key.
        "entry": url.replace("/hub_1/", "/hub_2/"),
        "artifact": url.replace("/lora.zip", "/gguf.zip"),
    }
    assert httpx.get(with_query(url)).status_code == 200  # re-encoding alone changes nothing
    for what, bad in tampered.items():
        response = httpx.get(bad)
        assert response.status_code == 403, (what, response.text)


def test_delete_removes_every_object_of_the_entry_and_no_other(storage, s3_store, prefix, tmp_path):
    storage.put("hub_a", "lora", artifact(tmp_path))
    storage.put("hub_a", "gguf", artifact(tmp_path))
    storage.put("hub_ab", "lora", artifact(tmp_path))  # shares hub_a's first characters
    link = storage.download_source("hub_a", "lora", filename="a.zip", lifetime=60)
    storage.delete("hub_a")
    assert s3_store.keys(prefix) == [f"{prefix}hub_ab/lora.zip"]
    assert httpx.get(link.url).status_code == 404
    storage.delete("hub_a")  # nothing left to remove: no error


BAD_ENTRY_IDS = ["../x", "hub_1/../../x", "", "hub_1/", "hub 1", "hub%2F..", "ｈｕｂ", "h" * 65]
BAD_ARTIFACTS = ["../lora", "LORA", "lora/../gguf", "model", "", "lora.zip"]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_names_that_could_leave_the_entry_are_refused(kind, request, tmp_path):
    storage = (
        LocalStorage(tmp_path / "hub") if kind == "local" else request.getfixturevalue("storage")
    )
    source = artifact(tmp_path)
    for entry_id in BAD_ENTRY_IDS:
        with pytest.raises(ValueError):
            storage.put(entry_id, "lora", source)
        with pytest.raises(ValueError):
            storage.download_source(entry_id, "lora", filename="a.zip", lifetime=60)
        with pytest.raises(ValueError):
            storage.delete(entry_id)
    for name in BAD_ARTIFACTS:
        with pytest.raises(ValueError):
            storage.put("hub_1", name, source)
        with pytest.raises(ValueError):
            storage.download_source("hub_1", name, filename="a.zip", lifetime=60)
    if kind == "s3":
        s3_store, prefix = request.getfixturevalue("s3_store"), request.getfixturevalue("prefix")
        assert s3_store.keys(prefix) == []
    assert source.exists() and not (tmp_path / "hub").exists()


def test_store_errors_name_the_bucket_and_key(s3_store, prefix, tmp_path):
    missing = S3Storage.from_settings(
        StorageSettings(**s3_store.settings(bucket="no-such-bucket", prefix=prefix))
    )
    with pytest.raises(StorageError, match=f"s3://no-such-bucket/{prefix}hub_1/lora.zip"):
        missing.put("hub_1", "lora", artifact(tmp_path))
    forged = S3Storage.from_settings(
        StorageSettings(**s3_store.settings(secret_access_key="not-the-secret", prefix=prefix))
    )
    with pytest.raises(StorageError, match="could not upload"):
        forged.put("hub_1", "lora", artifact(tmp_path))
    with pytest.raises(StorageError, match="could not delete"):
        forged.delete("hub_1")


def test_credentials_come_from_the_environment_when_not_configured(
    s3_store, prefix, tmp_path, monkeypatch
):
    for name, value in s3_store.environment().items():
        monkeypatch.setenv(name, value)
    fields = {"access_key_id": None, "secret_access_key": None, "prefix": prefix}
    storage = S3Storage.from_settings(StorageSettings(**s3_store.settings(**fields)))
    stored = storage.put("hub_1", "lora", artifact(tmp_path))
    link = storage.download_source("hub_1", "lora", filename=stored.filename, lifetime=60)
    assert httpx.get(link.url).status_code == 200


def test_no_credentials_at_all_is_a_config_error_naming_the_field(s3_store, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fields = {"access_key_id": None, "secret_access_key": None}
    with pytest.raises(ConfigError) as caught:
        S3Storage.from_settings(StorageSettings(**s3_store.settings(**fields)))
    assert [problem.field for problem in caught.value.problems] == ["storage.access_key_id"]
    assert "AWS_ACCESS_KEY_ID" in caught.value.hint


# Settings ---------------------------------------------------------------------------


def load(tmp_path: Path, storage: dict) -> Settings:
    (tmp_path / "tunery.yaml").write_text(yaml.safe_dump({"storage": storage}))
    return Settings.load(tmp_path)


def plane_for(settings: Settings) -> ControlPlane:
    """A control plane with nothing but settings: enough to reach its storage."""
    return ControlPlane(
        settings=settings,
        sessions=None,  # type: ignore[arg-type]
        backend=None,
        notifier=EventNotifier(),
    )


def test_storage_is_local_by_default_and_built_once(tmp_path):
    settings = Settings.load(tmp_path)
    assert settings.storage.kind == "local"
    plane = plane_for(settings)
    assert isinstance(plane.storage, LocalStorage)
    assert plane.storage is plane.storage
    assert plane.storage.root == tmp_path / "hub"


def test_s3_settings_load_and_the_plane_builds_an_s3_store(tmp_path):
    settings = load(
        tmp_path,
        {
            "kind": "s3",
            "bucket": "tunery-hub",
            "prefix": "/studio/hub",
            "endpoint_url": "http://127.0.0.1:9000/",
            "region": "us-east-1",
            "access_key_id": "AKEXAMPLE",
            "secret_access_key": "do-not-print-me",
        },
    )
    assert settings.storage.prefix == "studio/hub/"
    assert settings.storage.endpoint_url == "http://127.0.0.1:9000"
    assert "do-not-print-me" not in repr(settings)
    plane = plane_for(settings)
    assert isinstance(plane.storage, S3Storage) and plane.storage is plane.storage
    assert plane.storage.key("hub_1", "gguf") == "studio/hub/hub_1/gguf.zip"


S3 = {"kind": "s3", "bucket": "tunery-hub"}


@pytest.mark.parametrize(
    "storage, field, message",
    [
        ({"kind": "s3"}, "storage.bucket", "required with kind: s3"),
        ({"kind": "gcs"}, "storage.kind", "'local' or 's3'"),
        ({"bucket": "tunery-hub"}, "storage.bucket", "only used with kind: s3"),
        ({"kind": "s3", "bucket": "Tunery_Hub"}, "storage.bucket", "pattern"),
        ({**S3, "endpoint": "http://x"}, "storage.endpoint", "unknown field"),
        ({**S3, "endpoint_url": "minio:9000"}, "storage.endpoint_url", "http:// or https://"),
        ({**S3, "endpoint_url": "http://h:9000/tunery-hub"}, "storage.endpoint_url", "base URL"),
        ({**S3, "access_key_id": "AK"}, "storage.secret_access_key", "required with access"),
        ({**S3, "secret_access_key": "s"}, "storage.secret_access_key", "without access_key_id"),
        ({**S3, "prefix": "../hub"}, "storage.prefix", "'..' is not allowed"),
        ({**S3, "prefix": "a//b"}, "storage.prefix", "'' is not allowed"),
        ({**S3, "region": "US East"}, "storage.region", "pattern"),
    ],
)
def test_invalid_storage_settings_name_the_field(tmp_path, storage, field, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, storage)
    problems = {problem.field: problem.message for problem in caught.value.problems}
    assert list(problems) == [field]
    assert message in problems[field]
    assert str(tmp_path / "tunery.yaml") in caught.value.hint


def test_kind_s3_without_boto3_says_how_to_install_it(tmp_path, monkeypatch):
    valid = StorageSettings(kind="s3", bucket="tunery-hub")
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, S3)
    assert caught.value.problems[0].field == "storage.kind"
    assert INSTALL_HINT in caught.value.problems[0].message
    with pytest.raises(ConfigError, match="needs boto3") as direct:
        S3Storage.from_settings(valid)
    assert direct.value.hint == INSTALL_HINT
