"""Analysis -> Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report.

Implements DICOM PS3.16 TID 1500 (Measurement Report) with TID 1204 language, TID 1002/1004
device observer context, TID 1600 Image Library, one TID 1410/1501 measurement group per
finding (Tracking Identifier and UID, NUM items with UCUM units, CODE qualitative items,
SCOORD3D nodule centres) and TID 4019 algorithm identification carrying weight hashes.
Built with highdicom so that OHIF and other TID 1500 viewers can display it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    ImageRegion3D,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from inference.findings import Analysis, AnalyzerResult, Code, Finding
from inference.volume import Volume
from reporting.keyimage import key_slices
from reporting.uids import device_uid, output_uid

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
PRIVATE_SCHEME = "99CTNODE"
LANGUAGE = CodedConcept("en-US", "RFC5646", "English (United States)")
PROCEDURE_CT_CHEST = CodedConcept("169069000", "SCT", "CT of chest")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("2667000", "SCT", "Absent")
SCORE_NAME = CodedConcept("SCORE", PRIVATE_SCHEME, "Finding score")
PROBABILITY_NAME = CodedConcept("PROB", PRIVATE_SCHEME, "Finding probability")
NO_UNITS = CodedConcept("1", "UCUM", "no units")


def _concept(code: Code) -> CodedConcept:
    return CodedConcept(code.value, code.scheme, code.meaning)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").upper()[:16] or "X"


def analyzer_versions(analysis: Analysis) -> list[tuple[str, str]]:
    """(analyzer, version) pairs, the part of the output UID seed that tracks the software."""
    pairs = [(r.analyzer, r.version) for r in analysis.results]
    pairs.append((f"fusion:{analysis.fusion.method}", analysis.fusion.version))
    return pairs


def algorithm_id(result: AnalyzerResult) -> AlgorithmIdentification:
    """TID 4019 for one analyzer; every weight file hash is an Algorithm Parameter."""
    params = [f"weights_sha256={h}" for h in result.weights_sha256] or None
    return AlgorithmIdentification(name=result.analyzer, version=result.version, parameters=params)


def _measurements(finding: Finding, alg: AlgorithmIdentification) -> list[Measurement]:
    items: list[Measurement] = []
    if finding.score is not None:
        name = PROBABILITY_NAME if finding.calibrated else SCORE_NAME
        items.append(Measurement(name=name, value=float(finding.score), unit=NO_UNITS))
    for m in finding.measurements:
        name = (
            _concept(m.code)
            if m.code is not None
            else CodedConcept(_slug(m.name), PRIVATE_SCHEME, m.name[:64])
        )
        items.append(
            Measurement(
                name=name,
                value=float(m.value),
                unit=CodedConcept(m.unit, "UCUM", m.unit),
                algorithm_id=alg,
            )
        )
    return items


def measurement_group(
    finding: Finding,
    index: int,
    result: AnalyzerResult,
    frame_of_reference_uid: str,
    seed: tuple[str, list[str], list[tuple[str, str]]],
) -> MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1501/1410 group for ``finding``; a located finding gets a SCOORD3D point."""
    series_uid, instances, versions = seed
    identifier = f"{result.analyzer}/{finding.label}#{index}"
    tracking = TrackingIdentifier(
        uid=output_uid(series_uid, instances, versions, f"tracking:{identifier}"),
        identifier=identifier[:64],
    )
    alg = algorithm_id(result)
    qualitative = [
        QualitativeEvaluation(
            name=_concept(finding.code), value=PRESENT if finding.present else ABSENT
        )
    ]
    common = dict(
        tracking_identifier=tracking,
        finding_type=_concept(finding.code),
        algorithm_id=alg,
        measurements=_measurements(finding, alg),
        qualitative_evaluations=qualitative,
    )
    if finding.location is not None:
        region = ImageRegion3D(
            graphic_type="POINT",
            graphic_data=np.array([finding.location], dtype=np.float64),
            frame_of_reference_uid=frame_of_reference_uid,
        )
        return PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)  # type: ignore[arg-type]
    return MeasurementsAndQualitativeEvaluations(**common)  # type: ignore[arg-type]


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


def _library(analysis: Analysis, volume: Volume, sources: Sequence[Dataset]) -> list[Dataset]:
    """The Image Library's entries (TID 1600): the key images, those the findings point to.

    Every instance of the analysed series is referenced in the evidence sequence anyway;
    listing all of them in the library as well made the SR of a 500-slice CT take most of
    a minute to build (highdicom builds and copies a descriptor tree per entry) for nothing
    a viewer shows.
    """
    wanted = {volume.slices[z].sop_instance_uid for z in key_slices(analysis, volume)}
    chosen = [s for s in sources if str(s.SOPInstanceUID) in wanted]
    return chosen or list(sources[:1])


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
        from node import __version__

        software_version = __version__
    instances = [s.sop_instance_uid for s in volume.slices]
    versions = analyzer_versions(analysis)
    seed = (analysis.series_uid, instances, versions)
    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid(node_name),
        name=f"{node_name} {software_version}"[:64],
        manufacturer_name="ctnode",
        model_name="ctnode",
    )
    context = ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    groups = []
    for result in analysis.results:
        for i, finding in enumerate(result.findings):
            groups.append(
                measurement_group(finding, i, result, volume.frame_of_reference_uid, seed)
            )
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=PROCEDURE_CT_CHEST,
        imaging_measurements=groups,
        language_of_content_item_and_descendants=LanguageOfContentItemAndDescendants(LANGUAGE),
        referenced_images=_library(analysis, volume, sources),
    )
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
