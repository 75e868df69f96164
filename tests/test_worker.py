"""The job worker against a real index and spool; the analysis is a small pipeline that
writes a real DICOM object (the real analysis pipeline is exercised end to end elsewhere)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from node.index import Index
from node.recovery import recover
from node.worker import AnalysisRequest, OutputObject, PipelineResult, Worker
from scp.spool import Spool
from tests.factory import ct_series, index_series, uid


def receive(index: Index, spool: Spool, seed: str, n: int = 3, study_uid: str | None = None) -> str:
    return index_series(index, spool, ct_series(n, 8, 8, seed=seed, study_uid=study_uid))


class SummaryPipeline:
    """Writes one secondary-capture-like copy of the first slice, or refuses on cue."""

    def __init__(self, invalid: str | None = None, fail: bool = False) -> None:
        self.invalid, self.fail = invalid, fail
        self.seen: list[int] = []

    def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult:
        files = request.files
        self.seen.append(len(files))
        if self.fail:
            raise RuntimeError("analyzer crashed")
        if self.invalid:
            return PipelineResult(
                {"processing_status": "Failure", "error": self.invalid}, invalid_reason=self.invalid
            )
        ds = pydicom.dcmread(files[0])
        ds.SOPInstanceUID = uid("output", ds.SOPInstanceUID)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out_dir / "summary.sc.dcm"
        ds.save_as(path, enforce_file_format=True)
        return PipelineResult(
            {"processing_status": "Success"},
            (OutputObject("sc", str(ds.SOPInstanceUID), path),),
            timings={"analyse": 0.01},
        )


@pytest.fixture
def env(tmp_path: Path) -> tuple[Index, Spool, Path]:
    return Index(tmp_path), Spool(tmp_path), tmp_path / "results"


def make_worker(env: tuple[Index, Spool, Path], pipeline: SummaryPipeline) -> Worker:
    index, spool, results = env
    return Worker(index, spool.store_dir, results, pipeline, lambda series: ["pacs", "archive"])


def series_row(index: Index) -> dict[str, object]:
    return index.query("SELECT state, reason FROM series")[0]


def test_reported_series_has_result_and_outbox_rows(env: tuple[Index, Spool, Path]) -> None:
    index, spool, results = env
    series = receive(index, spool, "w1")
    index.mark_stable(series, 3)
    pipeline = SummaryPipeline()
    worker = make_worker(env, pipeline)
    assert worker.run_once() and not worker.run_once()
    assert pipeline.seen == [3]
    assert series_row(index) == {"state": "REPORTED", "reason": ""}
    rows = index.query("SELECT destination, path, state FROM outbox ORDER BY destination")
    assert [r["destination"] for r in rows] == ["archive", "pacs"]
    assert all((results / r["path"]).is_file() and r["state"] == "PENDING" for r in rows)
    result = index.query("SELECT state, result_json, timings_json FROM results")[0]
    assert result["state"] == "REPORTED" and "Success" in result["result_json"]
    assert "total" in result["timings_json"]
    assert index.query("SELECT state FROM jobs")[0]["state"] == "done"
    assert not (results / ".staging" / "1").exists()


def test_invalid_series_gets_its_reason_and_sends_nothing(env: tuple[Index, Spool, Path]) -> None:
    index, spool, _ = env
    index.mark_stable(receive(index, spool, "w2"), 3)
    make_worker(env, SummaryPipeline(invalid="not_chest: no air-filled lungs")).run_once()
    assert series_row(index) == {"state": "INVALID", "reason": "not_chest: no air-filled lungs"}
    assert index.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0


def test_crashing_analysis_fails_the_series_and_the_worker_goes_on(
    env: tuple[Index, Spool, Path],
) -> None:
    index, spool, _ = env
    index.mark_stable(receive(index, spool, "w3"), 3)
    index.mark_stable(receive(index, spool, "w4"), 3)
    worker = make_worker(env, SummaryPipeline(fail=True))
    assert worker.run_once()
    worker.pipeline = SummaryPipeline()
    assert worker.run_once()
    states = sorted(r["state"] for r in index.query("SELECT state FROM series"))
    assert states == ["FAILED", "REPORTED"]
    failed = index.query("SELECT reason FROM series WHERE state = 'FAILED'")[0]
    assert "analyzer crashed" in failed["reason"]


def test_series_changed_during_analysis_is_not_sent(env: tuple[Index, Spool, Path]) -> None:
    index, spool, _ = env
    series = receive(index, spool, "w5")
    index.mark_stable(series, 3)

    class LateInstance(SummaryPipeline):
        def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult:
            receive(index, spool, "w5", n=4)  # the 4th slice arrives meanwhile
            return super().__call__(request, out_dir)

    make_worker(env, LateInstance()).run_once()
    assert series_row(index)["state"] == "RECEIVING"
    assert index.query("SELECT state FROM jobs")[0]["state"] == "superseded"
    assert index.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0


def test_interrupted_job_runs_again_after_recovery(env: tuple[Index, Spool, Path]) -> None:
    index, spool, _ = env
    index.mark_stable(receive(index, spool, "w6"), 3)
    worker = make_worker(env, SummaryPipeline())
    assert worker.claim() is not None  # then the process dies
    assert series_row(index)["state"] == "PROCESSING"
    spool.tmp_dir.joinpath("partial.tmp").write_bytes(b"x")
    assert recover(index, spool).jobs_requeued == 1
    assert worker.run_once()
    assert series_row(index)["state"] == "REPORTED"


def test_a_job_waits_while_its_study_still_receives_and_sees_the_whole_study(
    env: tuple[Index, Spool, Path],
) -> None:
    index, spool, _ = env
    study = str(uid("study-two-series"))
    first = receive(index, spool, "w7", n=3, study_uid=study)
    receive(index, spool, "w8", n=4, study_uid=study)  # still RECEIVING
    index.mark_stable(first, 3)
    pipeline = SummaryPipeline()
    worker = make_worker(env, pipeline)
    assert worker.claim() is None
    second = index.query("SELECT series_uid FROM series WHERE series_uid != ?", (first,))[0]
    index.mark_stable(second["series_uid"], 4)
    assert worker.run_once()
    assert pipeline.seen == [7]  # both series' instances, for selection over the study


def test_not_selected_series_is_recorded_and_sends_nothing(
    env: tuple[Index, Spool, Path],
) -> None:
    index, spool, _ = env
    index.mark_stable(receive(index, spool, "w9"), 3)

    class Elsewhere(SummaryPipeline):
        def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult:
            return PipelineResult({}, not_selected="not selected: series 3 is analysed instead")

    make_worker(env, Elsewhere()).run_once()
    assert series_row(index) == {
        "state": "NOT_SELECTED",
        "reason": "not selected: series 3 is analysed instead",
    }
    assert index.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0


def test_stop_between_stages_gives_the_job_back(env: tuple[Index, Spool, Path]) -> None:
    index, spool, results = env
    index.mark_stable(receive(index, spool, "w10"), 3)
    stopping = [False]

    class Staged(SummaryPipeline):
        def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult:
            request.checkpoint("load")
            stopping[0] = True  # SIGTERM arrives during the first stage
            request.checkpoint("analyse")
            raise AssertionError("the pipeline went on past a stop")

    worker = Worker(
        index, spool.store_dir, results, Staged(), lambda s: ["pacs"], stopping=lambda: stopping[0]
    )
    assert not worker.run_once()
    assert series_row(index)["state"] == "STABLE"
    assert index.query("SELECT state FROM jobs")[0]["state"] == "queued"
    stopping[0] = False
    worker.pipeline = SummaryPipeline()
    assert worker.run_once()
    assert series_row(index)["state"] == "REPORTED"


def test_a_changed_series_is_reported_again_naming_the_old_report(
    env: tuple[Index, Spool, Path],
) -> None:
    index, spool, _ = env
    seen: list[tuple[Path, ...]] = []

    class Recording(SummaryPipeline):
        def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult:
            seen.append(request.previous_reports)
            result = super().__call__(request, out_dir)
            (obj,) = result.objects
            renamed = obj.path.replace(out_dir / "report.sr.dcm")
            return replace(result, objects=(OutputObject("sr", obj.sop_instance_uid, renamed),))

    series = receive(index, spool, "w11")
    index.mark_stable(series, 3)
    worker = make_worker(env, Recording())
    assert worker.run_once()
    receive(index, spool, "w11", n=4)  # a late slice after the report
    (row,) = index.query("SELECT state, revision FROM series")
    assert row["state"] == "RECEIVING"
    assert index.mark_stable(series, row["revision"]) is not None
    assert worker.run_once()
    assert seen[0] == ()
    (previous,) = seen[1]
    assert previous.name == "report.sr.dcm" and previous.is_file()
    assert series_row(index)["state"] == "REPORTED"
    assert [r["state"] for r in index.query("SELECT state FROM results")] == ["REPORTED"] * 2
