"""Artifact stores behind one small interface: put, get, exists, list, delete and uri.

- `LocalStore`: a directory (`file://` URI or a plain path); writes go to a temporary file, then rename.
- `S3Store`: `s3://bucket/prefix` through boto3, multipart for large files (boto3's transfer manager),
  bounded retries with backoff (botocore's standard mode), and fast failure when the endpoint is down.
One `StorageConfig` (the artifact root and the endpoint) feeds boto3, pyarrow's S3FileSystem (Ray Train's
storage, Parquet tables) and MLflow's S3 artifact store. Credentials come from the standard AWS chain only.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from workers.atomic import write_atomically

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(ValueError):
    """Storage that cannot be used as configured; the message names the URI or endpoint and what to do."""


class StorageNotFound(StorageError):
    """The key (or bucket) does not exist."""


class ArtifactStore(Protocol):
    def put(self, local_path: str, key: str, metadata: dict | None = None) -> str: ...
    def put_bytes(self, data: bytes, key: str) -> str: ...
    def get(self, key: str, local_path: str) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def metadata(self, key: str) -> dict | None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str = "") -> str: ...


@dataclass(frozen=True)
class StorageConfig:
    root: str
    endpoint: str | None = None
    create_bucket: bool = False

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def bucket_and_prefix(self) -> tuple[str, str]:
        parsed = urlparse(self.root)
        return parsed.netloc, parsed.path.strip("/")

    def local_path(self) -> Path:
        return Path(urlparse(self.root).path if self.root.startswith("file://") else self.root).absolute()

    def resolved_endpoint(self) -> str | None:
        return self.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None

    def boto3_client(self, *, max_attempts: int = 4):
        import boto3
        from botocore.config import Config
        config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=3,
                        read_timeout=60, s3={"addressing_style": "path"})
        return boto3.session.Session().client("s3", endpoint_url=self.resolved_endpoint(), config=config)

    def pyarrow_filesystem(self):
        """(filesystem, path) for pyarrow and Ray Train's `storage_filesystem`/`storage_path`."""
        import pyarrow.fs as pafs
        if not self.is_s3:
            return pafs.LocalFileSystem(), str(self.local_path())
        import boto3
        credentials = boto3.session.Session().get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials else None
        endpoint = self.resolved_endpoint()
        filesystem = pafs.S3FileSystem(
            access_key=frozen.access_key if frozen else None, secret_key=frozen.secret_key if frozen else None,
            session_token=frozen.token if frozen else None, endpoint_override=endpoint,
            scheme=urlparse(endpoint).scheme if endpoint else "https",
            region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            connect_timeout=3, request_timeout=60)
        bucket, prefix = self.bucket_and_prefix()
        return filesystem, f"{bucket}/{prefix}".rstrip("/")

    def mlflow_environment(self) -> dict[str, str]:
        """What MLflow's S3 artifact repository needs beyond the AWS chain: the endpoint, if any."""
        endpoint = self.resolved_endpoint()
        return {"MLFLOW_S3_ENDPOINT_URL": endpoint} if self.is_s3 and endpoint else {}


def parse_root(root: str) -> None:
    """Raise StorageError for a malformed artifact root."""
    parsed = urlparse(root)
    if parsed.scheme == "s3":
        if not _BUCKET.match(parsed.netloc or ""):
            raise StorageError(f"artifact root {root!r} is malformed; expected s3://BUCKET[/PREFIX] with a bucket "
                               f"name of 3-63 lowercase letters, digits, '.' or '-'")
        return
    if parsed.scheme in ("", "file"):
        if not (parsed.path or root):
            raise StorageError(f"artifact root {root!r} is empty; expected a folder, file:///PATH or s3://BUCKET/PREFIX")
        return
    raise StorageError(f"artifact root {root!r} has an unsupported scheme; expected a folder, file:///PATH or "
                       f"s3://BUCKET/PREFIX")


class LocalStore:
    def __init__(self, root: Path) -> None:
        """Checked, not created: folders appear with the first file written (a failed command leaves none)."""
        self.root = root
        existing = root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(f"artifact root {root}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK):
            raise StorageError(f"artifact root {root}: {existing} is not writable")

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, local_path: str, key: str, metadata: dict | None = None) -> str:
        write_atomically(self._path(key), lambda temporary: shutil.copyfile(local_path, temporary))
        return self.uri(key)

    def put_bytes(self, data: bytes, key: str) -> str:
        write_atomically(self._path(key), lambda temporary: temporary.write_bytes(data))
        return self.uri(key)

    def get(self, key: str, local_path: str) -> None:
        try:
            shutil.copyfile(self._path(key), local_path)
        except FileNotFoundError:
            raise StorageNotFound(f"{self.uri(key)} does not exist") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageNotFound(f"{self.uri(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def metadata(self, key: str) -> dict | None:
        return None  # a local file's content is checked directly

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and ".tmp-" not in p.name)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str = "") -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()


class S3Store:
    def __init__(self, config: StorageConfig) -> None:
        from boto3.s3.transfer import TransferConfig
        self.config = config
        self.bucket, self.prefix = config.bucket_and_prefix()
        self.client = config.boto3_client()
        # boto3's own multipart settings (8 MiB parts, 10 threads): large files go up in parallel parts.
        self.transfer = TransferConfig()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".lstrip("/") if self.prefix else key

    def _call(self, what: str, function, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return function(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StorageNotFound(f"{what}: does not exist") from None
            raise StorageError(f"{what} failed: {code or err}") from None
        except BotoCoreError as err:  # connection refused or reset, after botocore's bounded retries
            raise StorageError(f"{what} failed after retries: {err} (endpoint {self.config.resolved_endpoint() or 'AWS'})") from None

    def put(self, local_path: str, key: str, metadata: dict | None = None) -> str:
        extra = {"Metadata": metadata} if metadata else None
        self._call(f"upload of {local_path} to {self.uri(key)}", self.client.upload_file, local_path, self.bucket,
                   self._key(key), ExtraArgs=extra, Config=self.transfer)
        return self.uri(key)

    def put_bytes(self, data: bytes, key: str) -> str:
        self._call(f"upload to {self.uri(key)}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def get(self, key: str, local_path: str) -> None:
        self._call(f"download of {self.uri(key)}", self.client.download_file, self.bucket, self._key(key), local_path,
                   Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        response = self._call(f"download of {self.uri(key)}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read()

    def _head(self, key: str):
        try:
            return self._call(f"stat of {self.uri(key)}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except StorageNotFound:
            return None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def metadata(self, key: str) -> dict | None:
        head = self._head(key)
        return None if head is None else {"size": head["ContentLength"], **head.get("Metadata", {})}

    def list(self, prefix: str = "") -> list[str]:
        keys, token = [], None
        base = self._key(prefix)
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": base, **({"ContinuationToken": token} if token else {})}
            page = self._call(f"listing of {self.uri(prefix)}", self.client.list_objects_v2, **kwargs)
            keys += [item["Key"][len(self.prefix) + 1 if self.prefix else 0:] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return sorted(keys)

    def delete(self, key: str) -> None:
        self._call(f"delete of {self.uri(key)}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def uri(self, key: str = "") -> str:
        path = "/".join(p for p in (self.prefix, key) if p)
        return f"s3://{self.bucket}/{path}" if path else f"s3://{self.bucket}"


def check_bucket(config: StorageConfig) -> None:
    """Fail fast with one line: endpoint down, bucket missing (unless create_bucket), or access denied."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    bucket, _ = config.bucket_and_prefix()
    endpoint = config.resolved_endpoint() or "the AWS default endpoint"
    client = config.boto3_client(max_attempts=1)
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise StorageError(f"no AWS credentials found for s3://{bucket}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                           f"or a profile") from None
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            if not config.create_bucket:
                raise StorageError(f"bucket {bucket} does not exist at {endpoint}; create it or pass --create-bucket") from None
            client.create_bucket(Bucket=bucket)
        elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise StorageError(f"access to bucket {bucket} at {endpoint} was denied ({code}); check the AWS credentials") from None
        else:
            raise StorageError(f"bucket {bucket} at {endpoint} is not usable ({code or err})") from None
    except BotoCoreError as err:
        raise StorageError(f"S3 endpoint {endpoint} does not answer ({err.__class__.__name__}); start it or fix "
                           f"--s3-endpoint/AWS_ENDPOINT_URL") from None


def open_store(config: StorageConfig) -> ArtifactStore:
    parse_root(config.root)
    if config.is_s3:
        check_bucket(config)
        return S3Store(config)
    return LocalStore(config.local_path())
