"""``ctnode features``: the node's own analysis over many studies, kept as a feature table.

The same code as the node and ``ctnode analyze`` (``inference.prepare`` selects and loads
the series, ``inference.ensemble.run`` analyses it), so a model trained on these features
sees at run time exactly what it saw in training. Inputs are split into units (one per
path given, one per study of the node's store) that run in parallel processes; each
analysed series' features are cached per analyzer and analyzer version, so an interrupted
run resumes where it stopped and a re-run only analyses what changed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import Settings
from inference import ensemble
from inference.errors import IntakeError, InvalidSeries
from inference.feature_schema import FeatureSchema, as_float, json_ready
from inference.findings import AnalyzerResult
from inference.fusion.rules import RuleBasedFusion
from inference.prepare import prepare, prepare_files
from inference.selection import LUNG
from training.table import FeatureTable

if TYPE_CHECKING:
    from inference.ensemble import Ensemble


@dataclass(frozen=True)
class Unit:
    """One piece of work: a folder, ZIP, DICOMDIR or file (``path``), or one study of the
    node's store (``files``, with the result JSON the node stored for it, whose features are
    reused when the same analyzer code produced them). ``label`` fills the ``source`` column."""

    label: str
    path: Path | None = None
    files: tuple[Path, ...] = ()
    stored: str | None = None


@dataclass(frozen=True)
class Failure:
    """A study (or input) that gave no features, with the node's reason code."""

    source: str
    code: str
    reason: str


@dataclass(frozen=True)
class UnitResult:
    rows: tuple[tuple[str, str, str, tuple[float, ...]], ...] = ()
    failures: tuple[Failure, ...] = ()
    analysed: int = 0
    cached: int = 0
    reused: int = 0


@dataclass
class Summary:
    """Counts for the command's last line."""

    inputs: int = 0
    rows: int = 0
    analysed: int = 0
    cached: int = 0
    reused: int = 0
    failures: list[Failure] = field(default_factory=list)


class FeatureCache:
    """One JSON file per (series and its instances, analyzer, analyzer version), named by a
    hash (never by a DICOM value); written atomically, so a killed run leaves none half."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @staticmethod
    def key(
        series_uid: str, instances: Sequence[str], analyzer: str, version: str, sharp: bool
    ) -> str:
        text = json.dumps([series_uid, sorted(instances), analyzer, version, sharp])
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict[str, float] | None:
        if self.root is None:
            return None
        try:
            data = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
            return {str(k): as_float(v) for k, v in data["features"].items()}
        except (OSError, ValueError, KeyError, AttributeError):
            return None

    def put(self, key: str, features: dict[str, float]) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{key}.json"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"features": json_ready(features)}), encoding="utf-8")
        os.replace(tmp, path)


def extract_unit(unit: Unit, settings: Settings, cache_dir: Path | None) -> UnitResult:
    """Features of every study in ``unit``; studies that cannot be analysed are failures
    with the node's reason code, not errors."""
    analyzers = ensemble.shared(settings)
    schema = analyzers.feature_schema()
    if unit.stored is not None:
        row = _stored_row(unit, schema, analyzers.versions())
        if row is not None:
            return UnitResult(rows=(row,), reused=1)
    try:
        plans = prepare(unit.path, settings) if unit.path else prepare_files(unit.files, settings)
    except IntakeError as exc:
        return UnitResult(failures=(Failure(unit.label, exc.code, exc.message),))
    except InvalidSeries as exc:
        return UnitResult(failures=(Failure(unit.label, exc.code, exc.message),))
    cache = FeatureCache(cache_dir)
    rows, failures, analysed, cached = [], [], 0, 0
    for plan in plans:
        if plan.volume is None or plan.chosen is None:
            failures.append(Failure(unit.label, plan.reason_code or "", plan.reason or ""))
            continue
        values, hit = _features(plan, analyzers, cache)
        analysed += not hit
        cached += hit
        rows.append((plan.study_uid, plan.volume.series_uid, unit.label, values))
    return UnitResult(tuple(rows), tuple(failures), analysed, cached)


def _features(
    plan: Any, analyzers: Ensemble, cache: FeatureCache
) -> tuple[tuple[float, ...], bool]:
    """The plan's feature row and whether it came from the cache."""
    schema = analyzers.feature_schema()
    versions = analyzers.versions()
    volume = plan.volume
    sharp = plan.chosen.kernel_class == LUNG
    instances = [s.sop_instance_uid for s in volume.slices]
    keys = {
        s.analyzer: FeatureCache.key(
            volume.series_uid,
            instances,
            s.analyzer,
            f"{versions[s.analyzer]}/{s.version}",
            sharp,
        )
        for s in schema.sets
    }
    found = {analyzer: cache.get(key) for analyzer, key in keys.items()}
    if all(v is not None for v in found.values()):
        results = [AnalyzerResult(a, "", features=f or {}) for a, f in found.items()]
        return tuple(schema.vector(results)), True
    analysis = analyzers.run(volume, sharp_kernel=sharp, fusion=RuleBasedFusion())
    for result in analysis.results:
        if result.analyzer in keys:
            cache.put(keys[result.analyzer], result.features)
    return tuple(schema.vector(analysis.results)), False


def _stored_row(
    unit: Unit, schema: FeatureSchema, versions: dict[str, str]
) -> tuple[str, str, str, tuple[float, ...]] | None:
    """The row from a result the node stored, if the same analyzer code made all of it."""
    try:
        data = json.loads(unit.stored or "")
        by_name = {a["analyzer"]: a for a in data.get("analyzers") or []}
        results = []
        for feature_set in schema.sets:
            entry = by_name[feature_set.analyzer]
            if (
                entry.get("version") != versions[feature_set.analyzer]
                or entry.get("features_version") != feature_set.version
            ):
                return None
            results.append(
                AnalyzerResult(feature_set.analyzer, "", features=dict(entry["features"]))
            )
        return (
            str(data["study_uid"]),
            str(data["series_uid"]),
            unit.label,
            tuple(schema.vector(results)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def extract(
    units: Sequence[Unit],
    settings: Settings,
    *,
    cache_dir: Path | None,
    jobs: int = 1,
    progress: Callable[[int, int, UnitResult], None] | None = None,
) -> tuple[FeatureTable, Summary]:
    """Every unit's features in input order, ``jobs`` processes at a time."""
    results: list[UnitResult | None] = [None] * len(units)

    def done(i: int, result: UnitResult) -> None:
        results[i] = result
        if progress:
            progress(sum(r is not None for r in results), len(units), result)

    if jobs <= 1 or len(units) <= 1:
        for i, unit in enumerate(units):
            done(i, extract_unit(unit, settings, cache_dir))
    else:
        # spawn: the workers start clean (no threads or BLAS state copied from this process)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures: dict[Future[UnitResult], int] = {
                pool.submit(extract_unit, unit, settings, cache_dir): i
                for i, unit in enumerate(units)
            }
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    summary = Summary(inputs=len(units))
    rows = []
    seen: set[tuple[str, str]] = set()
    for result in results:
        assert result is not None
        summary.analysed += result.analysed
        summary.cached += result.cached
        summary.reused += result.reused
        summary.failures.extend(result.failures)
        for row in result.rows:
            if (row[0], row[1]) not in seen:  # the same series given twice counts once
                seen.add((row[0], row[1]))
                rows.append(row)
    summary.rows = len(rows)
    return FeatureTable.from_rows(ensemble.shared(settings).feature_schema(), rows), summary
