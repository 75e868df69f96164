"""Analysis -> Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report.

The document: TID 1204 language, TID 1002/1004 device observer context, Procedure reported
(CID 100), TID 1600 Image Library (the images the groups draw on), then

- Imaging Measurements: one TID 1411 group per nodule candidate (a circle of its diameter on
  its key slice, its 3D centre, side and zone) and TID 1501 groups for the lung-wide results
  of the quantitative analysis (lung volumes and density per lung, emphysema, opacity,
  consolidation), each drawn as the lung outline on the finding's key slice;
- Qualitative Evaluations: every finding present or absent, and as text what no image
  shows (the overall result, the neural networks' scores, the analyzers that did not run).

The templates themselves are in ``reporting.sr_templates``; why the content is split this
way (Pixelmed's template validator, OHIF 3.13's loader) is in its docstring. Built with
highdicom; every code comes from ``inference.codes``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import contourpy
import numpy as np
import numpy.typing as npt
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    ImageRegion,
    LanguageOfContentItemAndDescendants,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from config import __version__
from inference import codes
from inference.codes import PRIVATE_SCHEME, Code
from inference.findings import Analysis, AnalyzerResult, Finding
from inference.findings import Measurement as FindingMeasurement
from inference.volume import Volume
from reporting import sr_templates as tid
from reporting.uids import device_uid, output_uid

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
LANGUAGE = CodedConcept("en-US", "RFC5646", "English (United States)")
OUTLINE_POINTS = 120
Seed = tuple[str, list[str], list[tuple[str, str]]]
Group = MeasurementsAndQualitativeEvaluations | VolumetricROIMeasurementsAndQualitativeEvaluations


def analyzer_versions(analysis: Analysis) -> list[tuple[str, str]]:
    """(analyzer, version) pairs, the part of the output UID seed that tracks the software."""
    pairs = [(r.analyzer, r.version) for r in analysis.results]
    pairs.append((f"fusion:{analysis.fusion.method}", analysis.fusion.version))
    return pairs


def _tracking(identifier: str, seed: Seed) -> TrackingIdentifier:
    series_uid, instances, versions = seed
    return TrackingIdentifier(
        uid=output_uid(series_uid, instances, versions, f"tracking:{identifier}"),
        identifier=identifier[:64],
    )


def _algorithm(result: AnalyzerResult) -> AlgorithmIdentification:
    params = [f"weights_sha256={h}" for h in result.weights_sha256]
    return tid.tid4019_algorithm(result.analyzer, result.version, params)


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64] | None:
    """The longest closed contour of a 2D mask as SCOORD points (column, row; pixel centres
    at +0.5), thinned to at most ``OUTLINE_POINTS``, first point repeated to close it."""
    if not mask.any():
        return None
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    line = max(lines, key=len)  # type: ignore[arg-type]
    points = np.asarray(line, dtype=np.float64) - 1.0 + 0.5
    step = max(1, math.ceil(len(points) / OUTLINE_POINTS))
    points = points[::step]
    return np.vstack([points, points[:1]])


class _Regions:
    """Image regions on the analysed series: the lungs' outlines on a slice, the sources."""

    def __init__(self, analysis: Analysis, volume: Volume, sources: Sequence[Dataset]) -> None:
        self.volume = volume
        self.by_uid = {str(s.SOPInstanceUID): s for s in sources}
        self.lungs = {
            side: analysis.masks[name]
            for side, name in ((codes.LEFT, "lung_left"), (codes.RIGHT, "lung_right"))
            if name in analysis.masks
        }
        self.masks = analysis.masks
        self.used: list[str] = []

    def source(self, z: int) -> Dataset | None:
        uid = self.volume.slices[z].sop_instance_uid
        found = self.by_uid.get(uid)
        if found is not None and uid not in self.used:
            self.used.append(uid)
        return found

    def largest_slice(self, side: Code | None) -> int | None:
        masks = [m for s, m in self.lungs.items() if side is None or s == side]
        if not masks:
            return None
        areas = np.logical_or.reduce(masks).sum(axis=(1, 2))
        return int(np.argmax(areas)) if areas.max() > 0 else None

    def outlines(self, z: int | None, sides: Sequence[Code]) -> list[ImageRegion]:
        if z is None:
            return []
        source = self.source(z)
        if source is None:
            return []
        regions = []
        for side in sides:
            if side in self.lungs:
                points = _outline(self.lungs[side][z])
                if points is not None and len(points) >= 4:
                    regions.append(tid.image_region("POLYLINE", points, source))
        return regions

    def circle(self, finding: Finding) -> ImageRegion | None:
        z, location = finding.key_slice, finding.location
        if z is None or location is None:
            return None
        source = self.source(z)
        if source is None:
            return None
        x, y, _, _ = np.linalg.inv(self.volume.affine) @ np.array([*location, 1.0])
        diameter = next((m.value for m in finding.measurements if m.name == "Diameter"), 10.0)
        radius = diameter / 2.0 / float(self.volume.spacing[2])
        centre = (x + 0.5, y + 0.5)
        points = np.array([centre, (centre[0] + radius, centre[1])], dtype=np.float64)
        return tid.image_region("CIRCLE", points, source)


def _region_measure(result: AnalyzerResult, name: str, region: str) -> FindingMeasurement | None:
    return next((m for m in result.measurements if m.name == name and m.region == region), None)


# The lung-wide findings of the quantitative analysis, drawn as lung outlines.
LUNG_FINDINGS = ("Emphysema", "Lung opacity", "Consolidation")
LUNG_SIDES = (("both lungs", None), ("left lung", codes.LEFT), ("right lung", codes.RIGHT))


def _lung_groups(
    result: AnalyzerResult, regions: _Regions, seed: Seed
) -> tuple[list[Group], set[str]]:
    """TID 1501 groups for one analyzer's lung-wide results, where an outline can be drawn:
    one per lung region (volume, mean density, percentage of opacity) and one per finding
    (its measures over both lungs, its score and threshold), and the findings so drawn."""
    groups: list[Group] = []
    drawn: set[str] = set()
    algorithm = _algorithm(result)
    for region, side in LUNG_SIDES:
        names = ("Lung volume", "Mean lung density", "Percentage of opacity")
        measures = [m for n in names if (m := _region_measure(result, n, region)) is not None]
        sides = [side] if side is not None else [codes.RIGHT, codes.LEFT]
        outlines = regions.outlines(regions.largest_slice(side), sides)
        if measures and outlines:
            numbers = [tid.tid300_measurement(m) for m in measures]
            tracking = _tracking(f"{result.analyzer}/{region}", seed)
            groups.append(
                tid.tid1501_lung_group(codes.LUNG, tracking, algorithm, numbers, outlines, side)
            )
    for index, finding in enumerate(result.findings):
        lung_wide = finding.label in LUNG_FINDINGS and finding.location is None
        if not lung_wide or not finding.measurements:
            continue
        z = finding.key_slice if finding.key_slice is not None else regions.largest_slice(None)
        outlines = regions.outlines(z, _sides_of(finding, regions, z))
        if not outlines:
            continue
        numbers = [tid.tid300_measurement(m) for m in finding.measurements]
        if finding.score is not None:
            numbers.append(tid.score_measurement(float(finding.score), finding.calibrated))
        numbers += tid.threshold_measurement(finding.threshold)
        tracking = _tracking(f"{result.analyzer}/{finding.label}#{index}", seed)
        groups.append(tid.tid1501_lung_group(finding.code, tracking, algorithm, numbers, outlines))
        drawn.add(f"{result.analyzer}/{finding.label}")
    return groups, drawn


def _sides_of(finding: Finding, regions: _Regions, z: int | None) -> list[Code]:
    """The lungs to outline for a lung-wide finding on slice ``z``: the one holding more of
    the finding's overlay first (OHIF draws the first region), then the other."""
    overlay = {"Emphysema": "emphysema", "Lung opacity": "ground_glass"}.get(finding.label)
    mask = regions.masks.get(overlay or "consolidation")
    order = [codes.RIGHT, codes.LEFT]
    if z is not None and mask is not None:
        share = {s: int((mask[z] & m[z]).sum()) for s, m in regions.lungs.items()}
        order.sort(key=lambda s: -share.get(s, 0))
    return order


def _fusion_text(analysis: Analysis) -> str:
    fusion = analysis.fusion
    kind = "probability" if fusion.calibrated else "score, not calibrated"
    threshold = f", pathology at {fusion.threshold:.2f}" if fusion.threshold is not None else ""
    source = max(
        (f for f in analysis.findings if f.score is not None),
        key=lambda f: float(f.score or 0.0),
        default=None,
    )
    from_text = f" (from {source.label})" if source is not None else ""
    text = (
        f"{'Pathology suspected' if fusion.pathology else 'No pathology detected'}: "
        f"{fusion.probability_of_pathology:.2f}{from_text} ({kind}{threshold}); "
        f"most relevant finding: {fusion.most_dangerous_pathology_type or '-'}. "
        f"Fusion {fusion.method} {fusion.version}"
    )
    if fusion.weights_sha256:
        text += "; weights sha256 " + ", ".join(fusion.weights_sha256)
    if fusion.top_features:
        text += "; largest SHAP contributions (log-odds): " + ", ".join(
            f"{name} = {'missing' if math.isnan(value) else f'{value:.4g}'} ({shap:+.3f})"
            for name, value, shap in fusion.top_features
        )
    return text


def _qualitative(analysis: Analysis, drawn: set[str]) -> ContainerContentItem:
    """Presence of every finding (located ones once per analyzer and finding type), then
    the overall result, the scores of the findings no group holds (the neural networks',
    a nodule search that found no candidate), how an analyzer ran when not as its model
    card says (a reduced procedure), and the analyzers that did not run."""
    evaluations: list[tuple[Code, bool]] = [(codes.OVERALL, analysis.fusion.pathology)]
    texts: list[tuple[Code, str]] = [(codes.OVERALL_RESULT, _fusion_text(analysis))]
    located: dict[tuple[str, Code], bool] = {}
    for result in analysis.results:
        for finding in result.findings:
            if finding.location is not None:
                key = (result.analyzer, finding.code)
                located[key] = located.get(key, False) or finding.present
                continue
            evaluations.append((finding.code, finding.present))
            if f"{result.analyzer}/{finding.label}" in drawn or finding.score is None:
                continue
            kind = "probability" if finding.calibrated else "score, not calibrated"
            at = "0.5"
            if finding.threshold is not None:
                unit = finding.threshold.unit
                at = f"{finding.threshold.value:g}{'' if unit in ('%', '1') else ' '}"
                at += "" if unit == "1" else unit
            texts.append(
                (
                    codes.FINDING_RESULT,
                    f"{finding.label}: {finding.score:.2f} ({kind}, present at {at}; "
                    f"{result.analyzer} {result.version})",
                )
            )
    evaluations[1:1] = [(code, present) for (_, code), present in located.items()]
    texts += [
        (codes.FINDING_RESULT, f"{result.analyzer}: {shown.note}")
        for result in analysis.results
        for shown in result.maps
        if shown.note
    ]
    texts += [
        (codes.FINDING_RESULT, f"{r.analyzer}: {n}") for r in analysis.results for n in r.notes
    ]
    texts += _identities(analysis)
    texts += [(codes.NOT_RUN, f"{name}: {why}") for name, why in analysis.not_run]
    return tid.tid1500_qualitative_evaluations(evaluations, texts)


def _identities(analysis: Analysis) -> list[tuple[Code, str]]:
    """TID 4019's parameters (the weights' sha256) of every analyzer with weights, as text:
    a neural analyzer's scores are text too, in no measurement group with an algorithm
    identification, and the report must still name the exact model that made them."""
    return [
        (
            codes.ALGORITHM_PARAMETERS,
            f"{r.analyzer} {r.version}: "
            + ", ".join(f"weights_sha256={h}" for h in r.weights_sha256),
        )
        for r in analysis.results
        if r.weights_sha256
    ]


_TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def _with_type2_attributes(sources: Sequence[Dataset]) -> list[Dataset]:
    """Sources with the Patient/General Study type 2 attributes present (empty if absent).

    highdicom reads these from the first evidence dataset; real sources often omit e.g.
    PatientBirthDate, which PS3.3 C.7.1.1 allows as type 2 (present, may be empty).
    """
    first = Dataset()
    first.update(sources[0])
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in first:
            setattr(first, keyword, "")
    return [first, *sources[1:]]


def sr_uids(analysis: Analysis, volume: Volume) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR, derived deterministically."""
    instances = [s.sop_instance_uid for s in volume.slices]
    versions = analyzer_versions(analysis)
    return (
        output_uid(analysis.series_uid, instances, versions, "sr-series"),
        output_uid(analysis.series_uid, instances, versions, "sr"),
    )


def build_sr(
    analysis: Analysis,
    volume: Volume,
    sources: Sequence[Dataset],
    *,
    node_name: str = "ctnode",
    software_version: str = "",
    previous: Sequence[Dataset] = (),
) -> Comprehensive3DSR:
    """The TID 1500 report for ``analysis`` of the series ``sources`` (headers suffice).

    The report is marked incomplete and unverified (CompletionFlag PARTIAL,
    VerificationFlag UNVERIFIED): it is machine output awaiting a radiologist. ``previous``
    are the reports this one supersedes (the series changed after they were made): they
    go into the Predecessor Documents Sequence, so a viewer can tell the versions apart.
    """
    if not sources:
        raise ValueError("no source datasets: the SR must reference the analysed series")
    if not software_version:
        software_version = __version__
    instances = [s.sop_instance_uid for s in volume.slices]
    versions = analyzer_versions(analysis)
    seed: Seed = (analysis.series_uid, instances, versions)
    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid(node_name),
        name=f"{node_name} {software_version}"[:64],
        manufacturer_name="ctnode",
        model_name="ctnode",
    )
    context = ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=dicom_codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    regions = _Regions(analysis, volume, sources)
    groups: list[Group] = []
    drawn: set[str] = set()
    for result in analysis.results:
        for index, finding in enumerate(result.findings):
            circle = regions.circle(finding)
            if circle is None:
                continue
            tracking = _tracking(f"{result.analyzer}/{finding.label}#{index}", seed)
            groups.append(
                tid.tid1411_nodule(
                    finding, tracking, _algorithm(result), circle, volume.frame_of_reference_uid
                )
            )
        lung_groups, lung_drawn = _lung_groups(result, regions, seed)
        groups += lung_groups
        drawn |= lung_drawn
    library = [regions.by_uid[uid] for uid in regions.used] or list(sources[:1])
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=tid.concept(codes.PROCEDURE_CT),
        imaging_measurements=groups,
        language_of_content_item_and_descendants=LanguageOfContentItemAndDescendants(LANGUAGE),
        referenced_images=library,
    )
    report[0].ContentSequence.append(_qualitative(analysis, drawn))
    series_uid, sop_uid = sr_uids(analysis, volume)
    sr = Comprehensive3DSR(
        evidence=_with_type2_attributes(sources),
        content=report,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="ctnode",
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description="ctnode AI measurement report (unverified)",
        previous_versions=list(previous) or None,
    )
    sr.SoftwareVersions = software_version
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "ctnode local codes"
    scheme.CodingSchemeResponsibleOrganization = "ctnode"
    sr.CodingSchemeIdentificationSequence = [scheme]
    charset = sources[0].get("SpecificCharacterSet")
    if charset:
        sr.SpecificCharacterSet = charset
    log.info("built SR %s with %d measurement groups", sop_uid[-12:], len(groups))
    return sr


__all__ = ["analyzer_versions", "build_sr", "sr_uids"]
