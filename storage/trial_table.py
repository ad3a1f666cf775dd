"""The durable record of the front: one Parquet table per experiment, made of one part per search (pyarrow).

Appending writes a new part atomically (a rename on disk, a single PUT on S3), with its manifest; readers
read the finished parts only, so `acla-orch pareto` works from the table without touching MLflow.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import put_artifact_set, verify_artifact_set
from .stores import ArtifactStore, StorageError

TABLE_FILE = "trials.parquet"


def append_trials(store: ArtifactStore, experiment: str, part: str, table: pa.Table) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TABLE_FILE
        pq.write_table(table, path)
        return put_artifact_set(store, f"tables/{experiment}/{part}", {TABLE_FILE: path})


def read_trials(store: ArtifactStore, experiment: str) -> pa.Table:
    parts = sorted({key.split("/")[2] for key in store.list(f"tables/{experiment}/") if key.endswith("manifest.json")})
    if not parts:
        raise StorageError(f"no trial table for {experiment} under {store.uri('tables')}; run a search first")
    tables = []
    for part in parts:
        prefix = f"tables/{experiment}/{part}"
        verify_artifact_set(store, prefix)
        # read on the calling thread (no pre-buffering, no threads): with pre_buffer, Arrow's IO pool reads ahead
        # and may release the Python bytes at interpreter exit, when the GIL can no longer be taken, which aborts
        # the process ("terminate called without an active exception", apache/arrow#34314; seen in `pareto`)
        with pq.ParquetFile(pa.BufferReader(store.get_bytes(f"{prefix}/{TABLE_FILE}")), pre_buffer=False) as part_file:
            tables.append(part_file.read(use_threads=False))
    return pa.concat_tables(tables, promote_options="default")
