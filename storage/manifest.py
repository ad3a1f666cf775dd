"""Artifact sets with a manifest: each file's sha256 and size, written last. A reader verifies before it
uses anything, so a partial upload is never taken as complete. Uploading a set again skips the files that
are already there intact, so an interrupted upload can be completed later."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .stores import ArtifactStore, StorageError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def sha256_of(path: str | os.PathLike, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _intact(store: ArtifactStore, key: str, size: int, sha: str, local: Path) -> bool:
    meta = store.metadata(key)
    if meta is not None and int(meta.get("size", -1)) != size:  # S3: a size mismatch needs no download
        return False
    if not store.exists(key):
        return False
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "copy"
        store.get(key, str(copy))
        return copy.stat().st_size == size and sha256_of(copy) == sha


def put_artifact_set(store: ArtifactStore, prefix: str, files: dict[str, str | os.PathLike],
                     after_each=None) -> str:
    """Upload `files` ({name in the set: local path}) under `prefix`, then the manifest; return its URI.
    `after_each(name)` is called after each file (progress; tests use it to break the connection)."""
    entries = {}
    with ThreadPoolExecutor(max_workers=1) as hasher:
        for name, local in sorted(files.items()):
            size, key = Path(local).stat().st_size, f"{prefix}/{name}"
            digest = hasher.submit(sha256_of, local)  # hashing overlaps the upload: checksums cost almost nothing
            if not store.exists(key) or not _intact(store, key, size, digest.result(), Path(local)):
                store.put(str(local), key)
            entries[name] = {"sha256": digest.result(), "size": size}
            if after_each:
                after_each(name)
    manifest = {"version": MANIFEST_VERSION, "files": entries}
    return store.put_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode(), f"{prefix}/{MANIFEST}")


def read_manifest(store: ArtifactStore, prefix: str) -> dict:
    if not store.exists(f"{prefix}/{MANIFEST}"):
        raise StorageError(f"{store.uri(prefix)} has no manifest: the artifact set is incomplete or missing")
    try:
        manifest = json.loads(store.get_bytes(f"{prefix}/{MANIFEST}"))
    except json.JSONDecodeError:
        raise StorageError(f"{store.uri(prefix)}/{MANIFEST} is not valid JSON") from None
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("files"), dict):
        raise StorageError(f"{store.uri(prefix)}/{MANIFEST} is not a version-{MANIFEST_VERSION} manifest")
    return manifest


def verify_artifact_set(store: ArtifactStore, prefix: str, download_to: str | os.PathLike | None = None) -> dict:
    """Check every listed file (size and sha256; downloads when `download_to` is given or the store keeps no
    metadata). Returns the manifest; raises StorageError naming the first bad file."""
    manifest = read_manifest(store, prefix)
    for name, entry in manifest["files"].items():
        key = f"{prefix}/{name}"
        if download_to is not None:
            target = Path(download_to) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            store.get(key, str(target))
            ok = target.stat().st_size == entry["size"] and sha256_of(target) == entry["sha256"]
        else:
            ok = _intact(store, key, entry["size"], entry["sha256"], Path(name))
        if not ok:
            raise StorageError(f"{store.uri(key)} does not match its manifest (size or sha256)")
    return manifest
