"""Rendered pages -> Secondary Capture Image Storage (PS3.3 A.8.1) in the source study.

One new series per analysed series; ``BurnedInAnnotation=YES`` since text is in the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from inference.findings import Analysis
from inference.volume import Volume
from reporting.keyimage import key_image, key_slices, map_image, map_slices
from reporting.render import lung_histogram, not_analysed_page, summary_page
from reporting.sr import _with_type2_attributes, analyzer_versions
from reporting.uids import output_uid

SC_SERIES_NUMBER = 9902


def _sc(
    pixels: npt.NDArray[np.uint8],
    ref: Dataset,
    analysis: Analysis,
    volume: Volume,
    kind: str,
    instance_number: int,
) -> hd.sc.SCImage:
    instances = [s.sop_instance_uid for s in volume.slices]
    versions = analyzer_versions(analysis)
    return _page(
        pixels,
        ref,
        output_uid(analysis.series_uid, instances, versions, "sc-series"),
        output_uid(analysis.series_uid, instances, versions, kind),
        instance_number,
        "ctnode AI summary (not for primary diagnosis)",
    )


def _page(
    pixels: npt.NDArray[np.uint8],
    ref: Dataset,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    description: str,
) -> hd.sc.SCImage:
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="ctnode",
        patient_orientation=("L", "P"),
    )
    sc.BurnedInAnnotation = "YES"
    # The chest is not a paired structure: Image Laterality U (unpaired, PS3.3 C.7.6.1.1.2)
    # says so, and Laterality (General Series, type 2C, required only without it) stays out.
    if "Laterality" in sc:
        del sc.Laterality
    sc.ImageLaterality = "U"
    sc.SeriesDescription = description
    charset = ref.get("SpecificCharacterSet")
    if charset:
        sc.SpecificCharacterSet = charset
    return sc


def build_summary_sc(
    analysis: Analysis, volume: Volume, sources: Sequence[Dataset], selection_reason: str
) -> hd.sc.SCImage:
    """The summary page as a Secondary Capture in the source study."""
    ref = _with_type2_attributes(sources)[0]
    label = f"{ref.get('SeriesDescription', '') or 'series'} ({len(volume.slices)} images)"
    lungs = [analysis.masks[k] for k in ("lung_left", "lung_right") if k in analysis.masks]
    lung = np.logical_or.reduce(lungs) if lungs else None
    pixels = summary_page(analysis, selection_reason, label, lung_histogram(volume.voxels, lung))
    return _sc(pixels, ref, analysis, volume, "sc-summary", 1)


def build_key_image_scs(
    analysis: Analysis, volume: Volume, sources: Sequence[Dataset]
) -> list[hd.sc.SCImage]:
    """Key slices with overlays, one Secondary Capture each, in the summary's series; then
    one per continuous map an analyzer drew (the diffusion anomaly map), in colour."""
    ref = _with_type2_attributes(sources)[0]
    pages = [
        _sc(key_image(analysis, volume, z), ref, analysis, volume, f"sc-key-{z}", 2 + i)
        for i, z in enumerate(key_slices(analysis, volume))
    ]
    for i, (shown, z) in enumerate(map_slices(analysis)):
        kind = f"sc-map-{i}-{z}"
        pixels = map_image(analysis, volume, shown, z)
        pages.append(_sc(pixels, ref, analysis, volume, kind, 2 + len(pages)))
    return pages


def build_not_analysed_sc(
    ref: Dataset, reason: str, series: list[tuple[str, str, str]], software_version: str
) -> hd.sc.SCImage:
    """One page saying why no series of the study was analysed, in the source study.

    ``series`` holds (series UID, label, verdict) for every series of the study; the UIDs
    derive from the study, its series and the software version, so a re-run (or another
    series' job of the same study) makes the same object and the PACS keeps one copy.
    """
    study_uid = str(ref.StudyInstanceUID)
    uids = [uid for uid, _, _ in series]
    versions = [("ctnode", software_version)]
    return _page(
        not_analysed_page(reason, [(label, v) for _, label, v in series]),
        _with_type2_attributes([ref])[0],
        output_uid(study_uid, uids, versions, "not-analysed-series"),
        output_uid(study_uid, uids, versions, "not-analysed"),
        1,
        "ctnode AI: study not analysed",
    )
