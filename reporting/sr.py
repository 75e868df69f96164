"""Analysis -> Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report.

Implements DICOM PS3.16 TID 1500 (Measurement Report) with TID 1204 language, TID 1002/1004
device observer context, TID 1600 Image Library, one TID 1410/1501 measurement group per
finding (Tracking Identifier and UID, NUM items with UCUM units, CODE qualitative items,
SCOORD3D nodule centres) and TID 4019 algorithm identification carrying weight hashes.
Built with highdicom so that OHIF and other TID 1500 viewers can display it.
"""

from __future__ import annotations

import hashlib
import logging
import math
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

from inference.findings import Analysis, AnalyzerResult, Code, Finding, Fusion
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
OVERALL = CodedConcept("CTN-0100", PRIVATE_SCHEME, "Overall pathology assessment")


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


def fusion_group(
    fusion: Fusion,
    units: dict[str, str],
    seed: tuple[str, list[str], list[tuple[str, str]]],
    not_run: Sequence[tuple[str, str]] = (),
) -> MeasurementsAndQualitativeEvaluations:
    """The overall result as one TID 1501 group: the fusion's identity (TID 4019: name,
    version, the sha256 of its files), the overall probability or score, pathology present
    or absent, and for a trained model its largest contributions as NUM pairs: the SHAP
    value (log-odds, no UCUM unit) and the feature's value in its unit (left out when the
    feature is missing). Each feature gets a private code derived from its name. Analyzers
    of the ensemble that gave no result are named with the reason among the fusion's
    Algorithm Parameters (``not_run=NAME: reason``), so a reader of the SR knows what the
    result was made without."""
    series_uid, instances, versions = seed
    identifier = f"fusion/{fusion.method}"
    tracking = TrackingIdentifier(
        uid=output_uid(series_uid, instances, versions, f"tracking:{identifier}"),
        identifier=identifier[:64],
    )
    params = [f"weights_sha256={h}" for h in fusion.weights_sha256]
    if fusion.threshold is not None:
        params.append(f"threshold={fusion.threshold:.6g}")
    params += [f"not_run={name}: {why}" for name, why in not_run]
    alg = AlgorithmIdentification(
        name=fusion.method, version=fusion.version, parameters=params or None
    )
    items = [
        Measurement(
            name=PROBABILITY_NAME if fusion.calibrated else SCORE_NAME,
            value=float(fusion.probability_of_pathology),
            unit=NO_UNITS,
            algorithm_id=alg,
        )
    ]
    for name, value, shap in fusion.top_features:
        items.append(
            Measurement(
                name=CodedConcept(
                    _feature_code("S", name), PRIVATE_SCHEME, f"SHAP value of {name}"[:64]
                ),
                value=float(shap),
                unit=NO_UNITS,
                algorithm_id=alg,
            )
        )
        if math.isfinite(value):
            unit = units.get(name, "1")
            items.append(
                Measurement(
                    name=CodedConcept(_feature_code("F", name), PRIVATE_SCHEME, name[:64]),
                    value=float(value),
                    unit=NO_UNITS if unit == "1" else CodedConcept(unit, "UCUM", unit),
                    algorithm_id=alg,
                )
            )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=OVERALL,
        algorithm_id=alg,
        measurements=items,
        qualitative_evaluations=[
            QualitativeEvaluation(name=OVERALL, value=PRESENT if fusion.pathology else ABSENT)
        ],
    )


def _feature_code(prefix: str, name: str) -> str:
    """A stable private code value (at most 16 characters) for a feature name."""
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:12]}".upper()


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


def _feature_units() -> dict[str, str]:
    from inference.ensemble import feature_units

    return feature_units()


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
    groups: list[
        MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for result in analysis.results:
        for i, finding in enumerate(result.findings):
            groups.append(
                measurement_group(finding, i, result, volume.frame_of_reference_uid, seed)
            )
    groups.append(fusion_group(analysis.fusion, _feature_units(), seed, analysis.not_run))
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
