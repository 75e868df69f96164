"""The worker's pipeline: a stable series' files -> checked volume -> analysis -> result.

The same code as ``ctnode analyze`` (``inference.prepare`` and ``inference.ensemble``); a
series that cannot be analysed comes back with its reason code, which the worker stores as
the series' INVALID reason. The SR and secondary captures it writes become the outbox's
deliveries; the legacy JSON is stored with the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

import reporting
from config import Settings
from inference import ensemble
from inference.errors import InvalidSeries
from inference.prepare import prepare_files
from inference.selection import LUNG
from node.worker import OutputObject, PipelineResult
from reporting import legacy_json


class AnalysisPipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, files: Sequence[Path], out_dir: Path) -> PipelineResult:
        started = time.perf_counter()
        try:
            plans = prepare_files(files, self.settings)
        except InvalidSeries as exc:
            reason = f"{exc.code}: {exc.message}"
            return PipelineResult(
                legacy_json.failure(
                    "", "", reason, time_of_processing=time.perf_counter() - started
                ),
                invalid_reason=reason,
            )
        plan = plans[0]
        loaded = time.perf_counter()
        if plan.volume is None:
            reason = f"{plan.reason_code}: {plan.reason}"
            return PipelineResult(
                legacy_json.failure(
                    plan.study_uid, "", reason, time_of_processing=loaded - started
                ),
                invalid_reason=reason,
                timings={"load": loaded - started},
            )
        chosen = plan.chosen
        analysis = ensemble.run(
            plan.volume, sharp_kernel=bool(chosen and chosen.kernel_class == LUNG)
        )
        analysed = time.perf_counter()
        written = reporting.write_outputs(
            analysis, plan.volume, plan.sources, out_dir, time_of_processing=analysed - started
        )
        reported = time.perf_counter()
        objects = [
            OutputObject(kind, _sop_instance_uid(path), path)
            for kind, paths in (("sr", [written.sr]), ("sc", list(written.sc)))
            for path in paths
        ]
        result = json.loads(written.json.read_text())
        return PipelineResult(
            result,
            tuple(objects),
            timings={
                "load": loaded - started,
                "analyse": analysed - loaded,
                "report": reported - analysed,
            },
        )


def _sop_instance_uid(path: Path) -> str:
    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
    )
