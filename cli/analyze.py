"""``ctnode analyze PATH``: the analysis without network or database, for a folder, a ZIP
archive, a DICOMDIR or a file. Prints every study's series with their verdicts, the series
chosen and why, and exits non-zero with the reason when nothing can be analysed.

Exit codes: 0 at least one study analysed; 2 the input cannot be read (bad archive, no
DICOM); 3 DICOM was found but no series can be analysed; 4 the configured fusion model
cannot be used (``[fusion] model``: missing, corrupt, or trained on other features).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import reporting
from cli.common import add_config_argument, load_settings
from inference import ensemble
from inference.errors import IntakeError, InvalidSeries
from inference.fusion import load_fusion
from inference.prepare import prepare
from inference.selection import LUNG
from reporting import legacy_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("path", type=Path, help="folder, ZIP archive, DICOMDIR or DICOM file")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the result as JSON")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write report.sr.dcm, summary.sc.dcm, key images and result.json",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    analyzers = ensemble.shared(settings)
    for state in analyzers.states:
        if state.fault:
            print(f"ctnode: analyzer {state.name} disabled: {state.reason}", file=sys.stderr)
    try:
        fusion = load_fusion(settings, analyzers.feature_schema())
    except ValueError as exc:
        print(f"ctnode: fusion model {settings.fusion.model!r}: {exc}", file=sys.stderr)
        return 4
    try:
        plans = prepare(args.path, settings)
    except IntakeError as exc:
        print(f"ctnode: cannot read {args.path}: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except InvalidSeries as exc:
        print(f"ctnode: nothing to analyse: {exc.code}: {exc.message}", file=sys.stderr)
        return 3
    report = []
    for number, plan in enumerate(plans):
        out = None
        if args.out is not None:
            out = args.out if len(plans) == 1 else args.out / f"study-{number + 1}"
        report.append(analyse(plan, settings, out, fusion))
    for study in report:
        print(render(study))
    if args.json:
        args.json.write_text(json.dumps(report if len(report) > 1 else report[0], indent=2))
    if all(study["reason_code"] for study in report):
        reasons = "; ".join(f"{s['reason_code']}: {s['decision']['reason']}" for s in report)
        print(f"ctnode: nothing can be analysed: {reasons}", file=sys.stderr)
        return 3
    return 0


def analyse(
    plan: Any, settings: Any, out: Path | None = None, fusion: Any = None
) -> dict[str, Any]:
    """Run the analysis on a study's chosen volume: the legacy JSON plus the decision; with
    ``out``, also the DICOM SR and secondary captures and ``result.json`` in that folder.
    ``fusion`` defaults to what ``settings`` configure (``inference.fusion.load_fusion``);
    the analyzers are the process's ensemble for ``settings`` (``inference.ensemble.shared``)."""
    analyzers = ensemble.shared(settings)
    decision = describe(plan)
    started = time.perf_counter()
    if plan.volume is None:
        result = legacy_json.failure(
            plan.study_uid, "", f"{plan.reason_code}: {plan.reason}", time_of_processing=0.0
        )
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            legacy_json.write(result, out / "result.json")
    else:
        chosen = plan.chosen
        analysis = analyzers.run(
            plan.volume,
            sharp_kernel=bool(chosen and chosen.kernel_class == LUNG),
            fusion=fusion or load_fusion(settings, analyzers.feature_schema()),
        )
        seconds = time.perf_counter() - started
        if out is not None:
            reason = chosen.why if chosen else ""
            files = reporting.write_outputs(
                analysis,
                plan.volume,
                plan.sources,
                out,
                selection_reason=reason,
                time_of_processing=seconds,
            )
            result = json.loads(files.json.read_text())
        else:
            result = legacy_json.success(analysis, time_of_processing=seconds, report_uids={})
        decision["fusion"] = {
            "method": analysis.fusion.method,
            "version": analysis.fusion.version,
            "calibrated": analysis.fusion.calibrated,
            "threshold": analysis.fusion.threshold,
            "top_features": result.get("top_shap_features") or [],
        }
        decision["findings"] = [
            {
                "label": f.label,
                "analyzer": f.analyzer,
                "score": f.score,
                "present": f.present,
                "key_slice": f.key_slice,
                "description": f.description,
                "location_mm": list(f.location) if f.location else None,
                "measurements": [
                    {"name": m.name, "value": m.value, "unit": m.unit} for m in f.measurements
                ],
            }
            for f in analysis.findings
        ]
    return {**result, "decision": decision, "reason_code": plan.reason_code}


def describe(plan: Any) -> dict[str, Any]:
    """A JSON-ready account of one study's plan (no patient attributes)."""
    volume = plan.volume
    return {
        "study_uid": plan.study_uid,
        "series_uid": volume.series_uid if volume else None,
        "reason_code": plan.reason_code,
        "reason": plan.reason,
        "notes": list(plan.notes),
        "series": [
            {
                "series_uid": v.series_uid,
                "series_number": v.series_number,
                "description": v.description,
                "kernel": v.kernel,
                "kernel_class": v.kernel_class,
                "images": v.images,
                "slice_thickness": v.slice_thickness,
                "valid": v.valid,
                "verdict": v.reason,
            }
            for v in plan.verdicts
        ],
        "volume": None
        if volume is None
        else {
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 4) for s in volume.spacing],
            "kernel": volume.kernel,
            "lung_extent_mm": round(plan.chest.lung_extent_mm, 1) if plan.chest else None,
        },
    }


def render(result: dict[str, Any]) -> str:
    study = result["decision"]
    lines = [f"study {study['study_uid']}"]
    for s in study["series"]:
        mark = "*" if s["verdict"] == "selected" else " "
        number = "" if s["series_number"] is None else str(s["series_number"])
        lines.append(
            f" {mark} series {number:>4} {s['images']:>4} images  "
            f"{(s['kernel'] or '-')[:12]:<12} {s['kernel_class']:<5}  "
            f"{(s['description'] or '')[:24]:<24}  {s['verdict']}"
        )
    if study["volume"]:
        v = study["volume"]
        lines.append(
            f"   volume {v['shape']} spacing {v['spacing_mm']} mm, lungs over "
            f"{v['lung_extent_mm']} mm"
        )
    else:
        lines.append(f"   not analysed: {study['reason_code']}: {study['reason']}")
    lines += [f"   note: {n}" for n in study["notes"]]
    for f in study.get("findings", []):
        mark = "+" if f["present"] else " "
        lines.append(f" {mark} {f['label']:<14} score {f['score']:.2f}  {f['description']}")
    if result["processing_status"] == "Success":
        fusion = study.get("fusion", {})
        calibrated = "calibrated" if fusion.get("calibrated") else "not a calibrated probability"
        lines.append(
            f"   overall: {result['probability_of_pathology']:.2f} "
            f"({fusion.get('method', '?')} fusion {fusion.get('version', '')}, {calibrated}), "
            f"most dangerous: {result['most_dangerous_pathology_type']}"
        )
        for item in fusion.get("top_features", []):
            lines.append(f"     SHAP {item['shap']:+.3f}  {item['feature']} = {item['value']:.4g}")
    return "\n".join(lines)
