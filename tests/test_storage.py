"""storage/ against the local disk and a real S3 server (SeaweedFS): the interface, manifests, Parquet,
faults and bad input."""
import os
import shutil
import tempfile
import uuid

import pyarrow as pa
import pytest

from storage.manifest import put_artifact_set, read_manifest, sha256_of, verify_artifact_set
from storage.stores import StorageConfig, StorageError, open_store, parse_root
from storage.trial_table import append_trials, read_trials
from tests.s3server import WeedServer


def new_bucket(server):
    name = f"acla-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(StorageConfig(str(tmp_path / "store")))
    server = request.getfixturevalue("s3_env")
    return open_store(StorageConfig(f"s3://{new_bucket(server)}/runs/x"))


def test_interface(store, tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(1000))
    uri = store.put(str(source), "dir/a.bin")
    assert uri == store.uri("dir/a.bin") and store.exists("dir/a.bin") and not store.exists("dir/b.bin")
    store.put_bytes(b"hello", "dir/sub/b.txt")
    assert store.list("dir") == ["dir/a.bin", "dir/sub/b.txt"]
    store.get("dir/a.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert store.get_bytes("dir/sub/b.txt") == b"hello"
    store.delete("dir/a.bin")
    assert store.list("dir") == ["dir/sub/b.txt"]
    with pytest.raises(StorageError, match="does not exist"):
        store.get_bytes("nothing/here")


def test_artifact_set_manifest_written_last_and_verified(store, tmp_path):
    files = {}
    for name, size in (("model.pt", 3000), ("genotype.json", 50)):
        (tmp_path / name).write_bytes(os.urandom(size))
        files[name] = tmp_path / name
    uri = put_artifact_set(store, "sets/one", files)
    assert uri.endswith("sets/one/manifest.json")
    manifest = verify_artifact_set(store, "sets/one", download_to=tmp_path / "down")
    assert manifest["files"]["model.pt"] == {"sha256": sha256_of(files["model.pt"]), "size": 3000}
    assert (tmp_path / "down" / "model.pt").read_bytes() == files["model.pt"].read_bytes()
    store.put_bytes(b"tampered", "sets/one/genotype.json")  # a file changed after the manifest
    with pytest.raises(StorageError, match="does not match its manifest"):
        verify_artifact_set(store, "sets/one", download_to=tmp_path / "down2")
    with pytest.raises(StorageError, match="no manifest"):
        read_manifest(store, "sets/missing")


def test_trial_table_appends_and_reads_back(store):
    append_trials(store, "acla-car", "search-1", pa.table({"run_id": ["a", "b"], "psnr": [30.0, 31.0]}))
    append_trials(store, "acla-car", "search-2", pa.table({"run_id": ["c"], "psnr": [29.5]}))
    table = read_trials(store, "acla-car")
    assert sorted(table.column("run_id").to_pylist()) == ["a", "b", "c"]
    with pytest.raises(StorageError, match="no trial table"):
        read_trials(store, "acla-sr")


def test_large_file_multipart(s3_env, tmp_path):
    store = open_store(StorageConfig(f"s3://{new_bucket(s3_env)}/big"))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # over boto3's 8 MiB multipart threshold
    put_artifact_set(store, "ckpt", {"big.bin": big})
    assert verify_artifact_set(store, "ckpt")["files"]["big.bin"]["size"] == big.stat().st_size
    head = s3_env.client().head_object(Bucket=store.bucket, Key="big/ckpt/big.bin")
    assert "-" in head["ETag"]  # a multipart upload's ETag carries its part count


@pytest.mark.parametrize("root,fragment", [("s3://", "malformed"), ("s3://UPPER_case/x", "malformed"),
                                           ("gs://bucket/x", "unsupported scheme"), ("s3://ab/x", "malformed")])
def test_malformed_uris(root, fragment):
    with pytest.raises(StorageError, match=fragment):
        parse_root(root)


def test_missing_bucket_not_created_unless_asked(s3_env):
    name = f"acla-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(StorageError, match=f"bucket {name} does not exist.*--create-bucket"):
        open_store(StorageConfig(f"s3://{name}/x"))
    store = open_store(StorageConfig(f"s3://{name}/x", create_bucket=True))
    assert store.list() == []


def test_wrong_credentials(s3_env, monkeypatch):
    bucket = new_bucket(s3_env)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="denied"):
        open_store(StorageConfig(f"s3://{bucket}/x"))


def test_endpoint_that_does_not_answer_fails_fast(monkeypatch):
    import time
    from tests.s3server import free_port_pair
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    endpoint = f"http://127.0.0.1:{free_port_pair()}"
    started = time.time()
    with pytest.raises(StorageError, match=f"S3 endpoint {endpoint} does not answer"):
        open_store(StorageConfig("s3://acla-bucket/x", endpoint=endpoint))
    assert time.time() - started < 15


def test_server_stopped_mid_upload_then_completed(monkeypatch, tmp_path):
    """Stop the S3 server in the middle of an artifact set: bounded retries, one clear error, no manifest;
    start it again and the same upload completes the set."""
    import time
    server = WeedServer(tempfile.mkdtemp(prefix="acla-weed-fault-")).start()
    try:
        from tests.s3server import ACCESS_KEY, SECRET_KEY
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        bucket = new_bucket(server)
        store = open_store(StorageConfig(f"s3://{bucket}/run", endpoint=server.endpoint))
        files = {}
        for index in range(3):
            files[f"part{index}.bin"] = tmp_path / f"part{index}.bin"
            files[f"part{index}.bin"].write_bytes(os.urandom(200_000))

        def stop_after_first(name):
            if name == "part0.bin":
                server.stop()
        started = time.time()
        with pytest.raises(StorageError) as failure:
            put_artifact_set(store, "ckpt", files, after_each=stop_after_first)
        assert "failed after retries" in str(failure.value) and "\n" not in str(failure.value)
        assert time.time() - started < 60  # bounded
        server.start()
        assert not store.exists("ckpt/manifest.json") and store.exists("ckpt/part0.bin")
        put_artifact_set(store, "ckpt", files)  # completes: part0 is kept, the rest uploaded, then the manifest
        assert set(verify_artifact_set(store, "ckpt")["files"]) == set(files)
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)
