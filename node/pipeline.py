"""The worker's pipeline: a stable series' files -> checked volume -> analysis -> result.

The same code as ``ctnode analyze`` (``inference.prepare`` and ``inference.ensemble``); a
series that cannot be analysed comes back with its reason code, which the worker stores as
the series' INVALID reason. DICOM outputs (SR, secondary captures) join here with the
reporting package; until then the result is the legacy JSON, stored with the job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from config import Settings
from inference import ensemble
from inference.errors import InvalidSeries
from inference.prepare import prepare_files
from inference.selection import LUNG
from node.worker import PipelineResult
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
                legacy_json.failure(reason, time.perf_counter() - started), invalid_reason=reason
            )
        plan = plans[0]
        loaded = time.perf_counter()
        if plan.volume is None:
            reason = f"{plan.reason_code}: {plan.reason}"
            return PipelineResult(
                legacy_json.failure(reason, loaded - started, study_uid=plan.study_uid),
                invalid_reason=reason,
                timings={"load": loaded - started},
            )
        chosen = plan.chosen
        analysis = ensemble.run(
            plan.volume, sharp_kernel=bool(chosen and chosen.kernel_class == LUNG)
        )
        done = time.perf_counter()
        result = legacy_json.success(analysis, done - started)
        return PipelineResult(result, timings={"load": loaded - started, "analyse": done - loaded})
