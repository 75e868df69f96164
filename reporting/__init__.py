"""Findings and source datasets -> DICOM SR (TID 1500), secondary captures and legacy JSON.

``write_outputs`` is the single entry point the CLI and the node call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from inference.findings import Analysis
from inference.volume import Volume


@dataclass(frozen=True)
class OutputFiles:
    """Paths written for one analysed series."""

    sr: Path
    json: Path
    sc: tuple[Path, ...] = ()


def write_outputs(
    analysis: Analysis,
    volume: Volume,
    sources: Sequence[Dataset],
    out_dir: Path,
    *,
    selection_reason: str = "",
    time_of_processing: float = 0.0,
    previous_reports: Sequence[Path] = (),
) -> OutputFiles:
    """Write ``report.sr.dcm``, ``summary.sc.dcm``, ``key-N.sc.dcm``, ``result.json``;
    the SR names ``previous_reports`` (earlier versions for the same series) as its
    predecessors."""
    # start-up time: a process that reads only the legacy JSON (the API of a receiving
    # process) must not load highdicom, the renderer and the analyzers' feature titles
    from reporting import legacy_json  # noqa: PLC0415
    from reporting.sc import build_key_image_scs, build_summary_sc  # noqa: PLC0415
    from reporting.sr import build_sr  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    previous = [dcmread(p, stop_before_pixels=True) for p in previous_reports]
    sr = build_sr(analysis, volume, sources, previous=previous)
    sr_path = out_dir / "report.sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    summary = build_summary_sc(analysis, volume, sources, selection_reason)
    sc_path = out_dir / "summary.sc.dcm"
    summary.save_as(sc_path, enforce_file_format=True)
    sc_paths = [sc_path]
    sc_uids = [str(summary.SOPInstanceUID)]
    for i, key in enumerate(build_key_image_scs(analysis, volume, sources), start=1):
        key_path = out_dir / f"key-{i}.sc.dcm"
        key.save_as(key_path, enforce_file_format=True)
        sc_paths.append(key_path)
        sc_uids.append(str(key.SOPInstanceUID))
    result = legacy_json.success(
        analysis,
        time_of_processing=time_of_processing,
        report_uids={"sr": str(sr.SOPInstanceUID), "sc": sc_uids},
    )
    json_path = legacy_json.write(result, out_dir / "result.json")
    return OutputFiles(sr=sr_path, json=json_path, sc=tuple(sc_paths))


__all__ = ["OutputFiles", "write_outputs"]
