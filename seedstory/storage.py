"""Filesystems for object storage, built from the environment the AWS SDKs already read.

Every job goes through here so that one set of variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``)
points boto3, s3fs, pyarrow, Ray Data and MLflow at the same store. Secrets are held as
``SecretStr`` so they never appear in a repr, a log line or an MLflow param.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs
from pydantic import SecretStr


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None
    access_key: str | None
    secret_key: SecretStr | None
    session_token: SecretStr | None
    region: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        secret = env.get("AWS_SECRET_ACCESS_KEY")
        token = env.get("AWS_SESSION_TOKEN")
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=SecretStr(secret) if secret else None,
            session_token=SecretStr(token) if token else None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    def __repr__(self) -> str:
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, access_key={'set' if self.access_key else None}, "
            f"secret_key={'***' if self.secret_key else None}, region={self.region!r})"
        )


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme in {"s3", "s3a"}


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b")."""
    parsed = urlparse(uri)
    if parsed.scheme not in {"s3", "s3a"} or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def strip_scheme(uri: str) -> str:
    """The path form s3fs and pyarrow filesystems take: ``bucket/key`` or a local path."""
    if is_remote(uri):
        bucket, key = split_uri(uri)
        return f"{bucket}/{key}".rstrip("/")
    return str(uri).removeprefix("file://")


def s3fs_filesystem(settings: S3Settings | None = None) -> fsspec.AbstractFileSystem:
    import s3fs

    settings = settings or S3Settings.from_env()
    return s3fs.S3FileSystem(
        key=settings.access_key,
        secret=settings.secret_key.get_secret_value() if settings.secret_key else None,
        token=settings.session_token.get_secret_value() if settings.session_token else None,
        endpoint_url=settings.endpoint_url,
        client_kwargs={"region_name": settings.region},
        skip_instance_cache=True,
    )


def pyarrow_filesystem(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    settings = settings or S3Settings.from_env()
    kwargs: dict = {"region": settings.region}
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or settings.endpoint_url
        kwargs["scheme"] = parsed.scheme or "https"
    if settings.access_key:
        kwargs["access_key"] = settings.access_key
        kwargs["secret_key"] = settings.secret_key.get_secret_value() if settings.secret_key else None
        if settings.session_token:
            kwargs["session_token"] = settings.session_token.get_secret_value()
    return pafs.S3FileSystem(**kwargs)


@lru_cache(maxsize=8)
def _cached_s3fs(settings: S3Settings) -> fsspec.AbstractFileSystem:
    return s3fs_filesystem(settings)


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that serves ``uri`` and the path to hand it."""
    if is_remote(uri):
        return _cached_s3fs(S3Settings.from_env()), strip_scheme(uri)
    return fsspec.filesystem("file"), strip_scheme(uri)


def arrow_filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` (what Ray Data's readers take as ``filesystem=``)."""
    if is_remote(uri):
        return pyarrow_filesystem(), strip_scheme(uri)
    return pafs.LocalFileSystem(), strip_scheme(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *(str(p).strip("/") for p in parts if str(p).strip("/"))])


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem_for(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem_for(uri)
    if not is_remote(uri):
        fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def remove_file(uri: str) -> None:
    """Delete one file if it is there."""
    fs, path = filesystem_for(uri)
    if fs.exists(path):
        fs.rm_file(path)


def check_writable(folder: str) -> None:
    """An ``OSError`` now, not after the work meant for ``folder``: in a bucket a probe object is written and
    removed, so whatever the store refuses fails here; a local folder, which need not exist yet, is not made."""
    if is_remote(folder):
        probe = join(folder, ".seedstory-write-check")
        write_bytes(probe, b"")
        remove_file(probe)
        return
    path = Path(strip_scheme(folder)).absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{existing} is not writable")


def upload_folder(folder: Path, uri: str, manifest: str | None = None) -> None:
    """Copy every file under ``folder`` to ``uri`` (local or s3://), publishing ``manifest`` atomically.

    The manifest already at ``uri`` is removed before anything is copied and the new one (when the
    folder has one) goes after every other file: a reader who finds a manifest finds every part it
    vouches for, and a copy that dies half-way leaves none.
    """
    fs, remote = filesystem_for(uri)
    if manifest:
        remove_file(join(uri, manifest))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != manifest)
    for file in [*files, *([folder / manifest] if manifest and (folder / manifest).is_file() else [])]:
        target = f"{remote}/{file.relative_to(folder).as_posix()}"
        if not is_remote(uri):
            fs.makedirs(fs._parent(target), exist_ok=True)
        fs.put_file(str(file), target)


def ensure_bucket(bucket: str, settings: S3Settings | None = None) -> None:
    """Create the bucket if it is missing (the local stack does this on start).

    boto3 rather than s3fs: s3fs always sends a LocationConstraint, which S3 rejects for us-east-1.
    """
    import boto3
    from botocore.exceptions import ClientError

    settings = settings or S3Settings.from_env()
    client = boto3.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
        aws_session_token=settings.session_token.get_secret_value() if settings.session_token else None,
    )
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    params: dict = {"Bucket": bucket}
    if settings.region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    client.create_bucket(**params)
