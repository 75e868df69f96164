"""The feature table: one row per analysed study (its chosen series), one column per schema
feature, as Parquet with the feature schema in the file's metadata.

The schema travels with the numbers so that training can refuse a table extracted by
another version of the analyzers, and so that a column the analyzers did not produce is
told apart from a value they could not measure (NaN).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from inference.feature_schema import FeatureSchema

SCHEMA_KEY = b"ctnode.feature_schema"
ID_COLUMNS = ("study_uid", "series_uid", "source")


class TableError(ValueError):
    """A features file that cannot be used, with a sentence saying why."""


@dataclass(frozen=True)
class FeatureTable:
    """Feature rows with their identifiers; ``values`` is rows x ``schema.names``."""

    schema: FeatureSchema
    study_uid: tuple[str, ...]
    series_uid: tuple[str, ...]
    source: tuple[str, ...]
    values: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        n = len(self.study_uid)
        if not len(self.series_uid) == len(self.source) == n:
            raise ValueError("identifier columns differ in length")
        if self.values.shape != (n, len(self.schema.names)):
            raise ValueError(
                f"values are {self.values.shape}, expected ({n}, {len(self.schema.names)})"
            )

    def __len__(self) -> int:
        return len(self.study_uid)

    @classmethod
    def from_rows(
        cls,
        schema: FeatureSchema,
        rows: Sequence[tuple[str, str, str, Sequence[float]]],
    ) -> FeatureTable:
        """From (study UID, series UID, source, values in schema order) tuples."""
        width = len(schema.names)
        values = np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), width)
        return cls(
            schema,
            tuple(r[0] for r in rows),
            tuple(r[1] for r in rows),
            tuple(r[2] for r in rows),
            values,
        )

    def write(self, path: Path) -> Path:
        """Write Parquet atomically (temporary file, then rename)."""
        columns: dict[str, pa.Array] = {
            "study_uid": pa.array(self.study_uid, pa.string()),
            "series_uid": pa.array(self.series_uid, pa.string()),
            "source": pa.array(self.source, pa.string()),
        }
        for i, name in enumerate(self.schema.names):
            columns[name] = pa.array(self.values[:, i], pa.float64())
        table = pa.table(columns)
        metadata = {SCHEMA_KEY: json.dumps(self.schema.to_json()).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: Path) -> FeatureTable:
        """Read a table ``write`` made; ``TableError`` names what is missing."""
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise TableError(f"cannot read {path}: {exc}") from exc
        raw = (table.schema.metadata or {}).get(SCHEMA_KEY)
        if raw is None:
            raise TableError(f"{path} is not a ctnode features file (no feature schema in it)")
        try:
            schema = FeatureSchema.from_json(json.loads(raw))
        except ValueError as exc:
            raise TableError(f"{path}: {exc}") from exc
        present = set(table.column_names)
        absent = [c for c in ID_COLUMNS if c not in present]
        if absent:
            raise TableError(f"{path} lacks the column(s) {', '.join(absent)}")
        lacking = [s.analyzer for s in schema.sets if any(name not in present for name in s.names)]
        if lacking:
            raise TableError(
                f"{path} lacks the features of analyzer(s) {', '.join(lacking)} its schema "
                f"{schema.version!r} names: extract them again with ctnode features"
            )
        values = np.zeros((table.num_rows, len(schema.names)))
        for i, name in enumerate(schema.names):
            values[:, i] = table.column(name).to_numpy(zero_copy_only=False)
        return cls(
            schema,
            tuple(str(v) for v in table.column("study_uid").to_pylist()),
            tuple(str(v) for v in table.column("series_uid").to_pylist()),
            tuple(str(v) for v in table.column("source").to_pylist()),
            values,
        )
