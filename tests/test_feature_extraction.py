"""``ctnode features`` underneath: the node's analysis over folders, ZIPs and the node's own
results, with failures reported, a per-series cache, and parallel processes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom

from cli.features import _index_units, _node_data_dir
from config import Settings
from node.index import Index
from node.pipeline import AnalysisPipeline
from node.worker import Worker
from scp.spool import Spool
from tests.factory import index_series
from tests.phantoms import chest_phantom
from training.extract import Unit, extract, extract_unit


def test_folders_zips_failures_and_the_cache(tmp_path: Path) -> None:
    chest_phantom(tmp_path / "in" / "a", "extract-a", lesion_mm=25.0)
    b = chest_phantom(tmp_path / "in" / "b", "extract-b")
    with zipfile.ZipFile(tmp_path / "in" / "b.zip", "w") as archive:
        for path in b:
            archive.write(path, f"series/{path.name}")
    (tmp_path / "in" / "notes").mkdir()
    (tmp_path / "in" / "notes" / "readme.txt").write_text("not DICOM")
    units = [
        Unit("a", path=tmp_path / "in" / "a"),
        Unit("b.zip", path=tmp_path / "in" / "b.zip"),
        Unit("notes", path=tmp_path / "in" / "notes"),
    ]
    cache = tmp_path / "cache"
    seen: list[int] = []
    table, summary = extract(
        units, Settings(), cache_dir=cache, progress=lambda done, total, _: seen.append(done)
    )
    assert seen == [1, 2, 3]
    assert table.source == ("a", "b.zip") and summary.analysed == 2 and summary.cached == 0
    assert [(f.source, f.code) for f in summary.failures] == [("notes", "no_dicom")]
    assert len(list(cache.glob("*.json"))) == 2  # one per series and analyzer
    opacity = table.schema.names.index("quant.both_lungs.ground_glass_range")
    assert table.values[0, opacity] > table.values[1, opacity]  # the lesion is measured
    again, summary = extract(units, Settings(), cache_dir=cache, jobs=2)
    assert summary.cached == 2 and summary.analysed == 0
    assert np.array_equal(again.values, table.values, equal_nan=True)
    assert again.study_uid == table.study_uid


def receive(index: Index, spool: Spool, paths: list[Path]) -> str:
    """Store ``paths`` as the node's SCP would, return the series UID."""
    return index_series(index, spool, [pydicom.dcmread(path) for path in paths])


def test_the_nodes_results_are_reused(tmp_path: Path) -> None:
    data = tmp_path / "var"
    index, spool = Index(data), Spool(data)
    paths = chest_phantom(tmp_path / "src", "from-the-node", lesion_mm=25.0)
    index.mark_stable(receive(index, spool, paths), len(paths))
    worker = Worker(
        index, spool.store_dir, data / "results", AnalysisPipeline(Settings()), lambda _: []
    )
    assert worker.run_once()
    assert index.query("SELECT state FROM results")[0]["state"] == "REPORTED"
    index.close()
    assert _node_data_dir(data) == data and _node_data_dir(data / "index.sqlite") == data
    assert _node_data_dir(tmp_path / "src") is None
    (unit,) = _index_units(data)
    assert len(unit.files) == len(paths) and unit.stored
    reused = extract_unit(unit, Settings(), None)
    assert reused.reused == 1 and reused.analysed == 0
    fresh = extract_unit(Unit("files", files=unit.files), Settings(), None)
    assert fresh.analysed == 1
    assert np.allclose(reused.rows[0][3], fresh.rows[0][3], equal_nan=True)
    # a result from other analyzer code is not trusted: the study is analysed again
    stored = json.loads(unit.stored or "")
    stored["analyzers"][0]["version"] = "0.9.0"
    again = extract_unit(
        Unit("index", files=unit.files, stored=json.dumps(stored)), Settings(), None
    )
    assert again.analysed == 1 and again.reused == 0
