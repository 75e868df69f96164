"""The worker's pipeline: a study's complete series -> selection -> the job's series as a
checked volume -> analysis -> report.

The same code as ``ctnode analyze`` (``inference.prepare`` and ``inference.ensemble``).
Selection runs over the whole study, so that a study sent as a lung-kernel and a soft-kernel
reconstruction (plus a localizer and a dose report) is reported once, on the series
selection prefers; the job's series is analysed only if it is that series. A series that
cannot be analysed comes back with its reason code, which the worker stores as the series'
INVALID reason. The SR and secondary captures become the outbox's deliveries; the legacy
JSON is stored with the job. Between stages the request's checkpoint lets a stopping node
give the job back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from pydicom import dcmread

import reporting
from config import Settings, __version__
from inference import ensemble
from inference.errors import InvalidSeries
from inference.fusion import load_fusion
from inference.prepare import StudyPlan, prepare_files
from inference.selection import LUNG, Verdict
from node.worker import AnalysisRequest, OutputObject, PipelineResult
from reporting import legacy_json


class AnalysisPipeline:
    """Built once per node process: the ensemble's models load here and stay resident."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ensemble = ensemble.shared(settings)
        # a fusion model that cannot be used stops the start
        self.fusion = load_fusion(settings, self.ensemble.feature_schema())

    def __call__(self, request: AnalysisRequest, out_dir: Path) -> PipelineResult:
        started = time.perf_counter()
        request.checkpoint("load")
        try:
            plans = prepare_files(request.files, self.settings)
        except InvalidSeries as exc:
            return _refused("", f"{exc.code}: {exc.message}", time.perf_counter() - started)
        plan = next(
            (p for p in plans if any(v.series_uid == request.series_uid for v in p.verdicts)),
            plans[0],
        )
        own = next((v for v in plan.verdicts if v.series_uid == request.series_uid), None)
        loaded = time.perf_counter()
        timings = {"load": loaded - started}
        chosen = plan.chosen
        if plan.volume is None or chosen is None:
            reason = (
                own.reason
                if own is not None and not own.valid
                else f"{plan.reason_code}: {plan.reason}"
            )
            refused = _refused(plan.study_uid, reason, loaded - started, timings)
            if self.settings.worker.report_not_analysed and plan.verdicts[0] == own:
                # one job of the study (its first series') writes the page for all of them
                page = _not_analysed_page(request, plan, reason, out_dir)
                return replace(refused, objects=(page,))
            return refused
        if chosen.series_uid != request.series_uid:
            if own is not None and not own.valid:
                return _refused(plan.study_uid, own.reason, loaded - started, timings)
            return PipelineResult(
                {"decision": [asdict(v) for v in plan.verdicts]},
                not_selected=f"not selected: {_describe(chosen)} is analysed instead",
                timings=timings,
            )
        return self._analyse(request, plan, chosen, out_dir, started, timings)

    def _analyse(
        self,
        request: AnalysisRequest,
        plan: StudyPlan,
        chosen: Verdict,
        out_dir: Path,
        started: float,
        timings: dict[str, float],
    ) -> PipelineResult:
        assert plan.volume is not None
        request.checkpoint("analyse")
        begun = time.perf_counter()
        analysis = self.ensemble.run(
            plan.volume,
            sharp_kernel=chosen.kernel_class == LUNG,
            fusion=self.fusion,
        )
        analysed = time.perf_counter()
        request.checkpoint("report")
        written = reporting.write_outputs(
            analysis,
            plan.volume,
            plan.sources,
            out_dir,
            selection_reason=chosen.why,
            time_of_processing=analysed - started,
            previous_reports=request.previous_reports,
        )
        reported = time.perf_counter()
        objects = [
            OutputObject(kind, _sop_instance_uid(path), path)
            for kind, paths in (("sr", [written.sr]), ("sc", list(written.sc)))
            for path in paths
        ]
        return PipelineResult(
            json.loads(written.json.read_text()),
            tuple(objects),
            timings={**timings, "analyse": analysed - begun, "report": reported - analysed},
        )


def _not_analysed_page(
    request: AnalysisRequest, plan: StudyPlan, reason: str, out_dir: Path
) -> OutputObject:
    # start-up time and memory: highdicom and the renderer (about 20 MB) load when a page
    # is first needed, not in every process that serves
    from reporting.sc import build_not_analysed_sc  # noqa: PLC0415

    ref = dcmread(request.files[0], stop_before_pixels=True)
    series = [
        (v.series_uid, f"series {v.series_number} {v.description}".strip(), v.reason)
        for v in plan.verdicts
    ]
    sc = build_not_analysed_sc(ref, reason, series, __version__)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "not-analysed.sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    return OutputObject("sc", str(sc.SOPInstanceUID), path)


def _refused(
    study_uid: str, reason: str, seconds: float, timings: dict[str, float] | None = None
) -> PipelineResult:
    return PipelineResult(
        legacy_json.failure(study_uid, "", reason, time_of_processing=seconds),
        invalid_reason=reason,
        timings=timings or {},
    )


def _describe(verdict: Verdict) -> str:
    return (
        f"series {verdict.series_number} ({verdict.description or 'no description'}, "
        f"{verdict.kernel or 'no kernel'}, {verdict.images} images)"
    )


def _sop_instance_uid(path: Path) -> str:
    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
    )
