"""The durable record of the front: one Parquet table per experiment, made of one part per search (pyarrow),
and beside it each search's width points (width.py's plain nets, one JSON part per search).

Appending writes a new part atomically (a rename on disk, a single PUT on S3), with its manifest; readers
read the finished parts only, so `acla-orch pareto` works from the table without touching MLflow, and a search
draws its front and width line from these records and its own trials, never from a read-back of the server.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .manifest import put_artifact_set, verify_artifact_set
from .stores import ArtifactStore, StorageError

TABLE_FILE = "trials.parquet"
WIDTH_FILE = "width.json"


def append_trials(store: ArtifactStore, experiment: str, part: str, table: pa.Table) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TABLE_FILE
        pq.write_table(table, path)
        return put_artifact_set(store, f"tables/{experiment}/{part}", {TABLE_FILE: path})


def finished_parts(store: ArtifactStore, folder: str) -> list[str]:
    """The parts under `folder` (`tables/acla-car-q10`) whose manifest was written: the finished ones."""
    return sorted({key.split("/")[2] for key in store.list(f"{folder}/") if key.endswith("manifest.json")})


def read_trials(store: ArtifactStore, experiment: str, *, missing_ok: bool = False) -> pa.Table:
    """Every finished part of the experiment's table; with `missing_ok`, an empty table where there is none yet
    (a first search) instead of the error."""
    parts = finished_parts(store, f"tables/{experiment}")
    if not parts and missing_ok:
        return pa.table({})
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


def append_width(store: ArtifactStore, experiment: str, part: str, points: list[dict]) -> str:
    """A search's width points ({budget_macs, macs, psnr, ...} each), as one part; written again, replaced."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WIDTH_FILE
        path.write_text(json.dumps(points, default=float))
        return put_artifact_set(store, f"widths/{experiment}/{part}", {WIDTH_FILE: path})


def read_widths(store: ArtifactStore, experiment: str) -> list[dict]:
    """Every search's width points of the experiment, each with its part (`search_run_id`); none, an empty list."""
    points = []
    for part in finished_parts(store, f"widths/{experiment}"):
        prefix = f"widths/{experiment}/{part}"
        verify_artifact_set(store, prefix)
        points += [{**point, "search_run_id": part} for point in json.loads(store.get_bytes(f"{prefix}/{WIDTH_FILE}"))]
    return points
