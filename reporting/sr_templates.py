"""The DICOM SR templates ctnode fills, one function per template, named by its TID (PS3.16),
so that the standard can be read beside the code.

- TID 4019 Algorithm Identification: :func:`tid4019_algorithm`
- TID 300 Measurement: :func:`tid300_measurement`
- TID 1411 Volumetric ROI Measurements: :func:`tid1411_nodule`
- TID 1501 Measurement and Qualitative Evaluation Group: :func:`tid1501_lung_group`
- TID 1500 row 12, Qualitative Evaluations: :func:`tid1500_qualitative_evaluations`

The document (TID 1500 Measurement Report) is assembled in ``reporting.sr``. Two viewers
shape what goes where (both read with their own code in ``tests/test_sr_viewers.py``):

- Pixelmed's ``DicomSRValidator`` checks each row: a measurement group holds no
  qualitative CODE items (TID 1501/1411 have no row for them), so presence and absence go
  to the report's Qualitative Evaluations container.
- OHIF 3.13 draws the groups of the Imaging Measurements container from their first
  SCOORD/SCOORD3D, and its loader fails on a group with none (it reads ``coords[0]``);
  it shows only NUM items without children. So every group there carries an image region
  on a slice of the analysed series, and the algorithm is named once per group
  (TID 1501/1411 row "Algorithm Identification"), not under each NUM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    CoordinatesForMeasurement3D,
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from inference import codes
from inference.codes import Code
from inference.findings import Finding
from inference.findings import Measurement as FindingMeasurement

QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
SCORE_UNIT = CodedConcept("{score}", "UCUM", "score")
PROBABILITY_UNIT = CodedConcept("{probability}", "UCUM", "probability")


def concept(code: Code) -> CodedConcept:
    return CodedConcept(code.value, code.scheme, code.meaning)


def ucum(unit: str) -> CodedConcept:
    """A UCUM unit; a unitless value gets the annotation ``{ratio}`` rather than ``1``, which
    viewers print as a trailing "1"."""
    return CodedConcept(
        unit if unit != "1" else "{ratio}", "UCUM", unit if unit != "1" else "ratio"
    )


def tid4019_algorithm(
    name: str, version: str, parameters: Sequence[str] = ()
) -> AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name, version and parameters (weight hashes,
    calibration), once per measurement group."""
    return AlgorithmIdentification(
        name=name, version=version or "0", parameters=list(parameters) or None
    )


def tid300_measurement(
    measure: FindingMeasurement,
    *,
    laterality: Code | None = None,
    centre: CoordinatesForMeasurement3D | None = None,
) -> Measurement:
    """TID 300 Measurement: a NUM with its UCUM unit. A lung measurement names its finding
    site (Lung, with the laterality of one lung); a nodule's diameter is inferred from its
    3D centre (SCOORD3D POINT, row 8 via TID 320)."""
    entry = codes.measurement(measure.name)
    sites = None
    if measure.region in ("both lungs", "left lung", "right lung"):
        side = {"left lung": codes.LEFT, "right lung": codes.RIGHT}.get(measure.region, laterality)
        sites = [FindingSite(concept(codes.LUNG), laterality=concept(side) if side else None)]
    return Measurement(
        name=concept(entry.code),
        value=float(measure.value),
        unit=ucum(measure.unit),
        finding_sites=sites,
        referenced_coordinates=[centre] if centre is not None else None,
    )


def score_measurement(score: float, calibrated: bool) -> Measurement:
    """The finding's score: a probability (DCM 122157) when calibrated, else CTN-0300
    "Score (not calibrated)", so the reader sees which it is next to the number."""
    if calibrated:
        return Measurement(name=concept(codes.PROBABILITY), value=score, unit=PROBABILITY_UNIT)
    return Measurement(name=concept(codes.SCORE), value=score, unit=SCORE_UNIT)


def threshold_measurement(threshold: FindingMeasurement | None) -> list[Measurement]:
    """The value at which the finding counts as present, in the unit of what it is read from."""
    if threshold is None:
        return []
    return [
        Measurement(
            name=concept(codes.THRESHOLD), value=float(threshold.value), unit=ucum(threshold.unit)
        )
    ]


def image_region(
    graphic_type: str, points: npt.NDArray[np.float64], source: Dataset
) -> ImageRegion:
    """An SCOORD on one image of the analysed series (column, row in pixels, PS3.3 C.18.6)."""
    return ImageRegion(
        graphic_type=graphic_type,
        graphic_data=np.asarray(points, dtype=np.float64),
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
        ),
    )


def tid1411_nodule(
    finding: Finding,
    tracking: TrackingIdentifier,
    algorithm: AlgorithmIdentification,
    circle: ImageRegion,
    frame_of_reference_uid: str,
) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 Volumetric ROI Measurements for one nodule candidate: its image region is a
    circle of its measured diameter on its key slice (what OHIF draws); the diameter NUM is
    inferred from its 3D centre (SCOORD3D POINT); finding site Lung with side and zone. The
    diameter comes first: OHIF labels the drawing with the group's first number."""
    centre = None
    if finding.location is not None:
        centre = CoordinatesForMeasurement3D(
            graphic_type="POINT",
            graphic_data=np.array([finding.location], dtype=np.float64),
            frame_of_reference_uid=frame_of_reference_uid,
            purpose=concept(codes.CENTER),
        )
    numbers = [tid300_measurement(m) for m in finding.measurements]
    if finding.score is not None:
        numbers.append(score_measurement(float(finding.score), finding.calibrated))
    numbers += threshold_measurement(finding.threshold)
    site = FindingSite(
        concept(codes.LUNG),
        laterality=concept(finding.laterality) if finding.laterality else None,
        topographical_modifier=concept(finding.zone) if finding.zone else None,
    )
    group = VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_regions=[circle],
        finding_type=concept(finding.code),
        algorithm_id=algorithm,
        finding_sites=[site],
        measurements=numbers,
    )
    if centre is not None:
        # highdicom refuses coordinates under a ROI group's NUMs; TID 300 allows them (row 8,
        # INFERRED FROM TID 320), and the centre is what the diameter was measured around
        diameter = next(
            item
            for item in group[0].ContentSequence
            if item.ValueType == "NUM"
            and item.ConceptNameCodeSequence[0].CodeValue == codes.DIAMETER.value
        )
        diameter.ContentSequence = [*diameter.get("ContentSequence", []), centre]
    return group


def tid1501_lung_group(
    finding_type: Code,
    tracking: TrackingIdentifier,
    algorithm: AlgorithmIdentification,
    numbers: Sequence[Measurement],
    regions: Sequence[ImageRegion],
    laterality: Code | None = None,
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 Measurement Group for a lung-wide result (volumes, density, the extent of
    emphysema or opacity): finding site Lung (with a side for one lung), the numbers, and
    the lung outline on the finding's key slice as the group's image regions (rows 10c/10d)
    so that OHIF can place the group on an image."""
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=concept(finding_type),
        algorithm_id=algorithm,
        finding_sites=[
            FindingSite(concept(codes.LUNG), laterality=concept(laterality) if laterality else None)
        ],
        measurements=list(numbers),
    )
    content = group[0].ContentSequence
    # rows 10c/10d come after the group's identification and before its measurements, as
    # highdicom orders the other groups' regions
    first_num = next(i for i, item in enumerate(content) if item.ValueType == "NUM")
    for offset, region in enumerate(regions):
        content.insert(first_num + offset, region)
    return group


def tid1500_qualitative_evaluations(
    evaluations: Sequence[tuple[Code, bool]], texts: Sequence[tuple[Code, str]]
) -> ContainerContentItem:
    """TID 1500 rows 12-14, Qualitative Evaluations: each finding present or absent (CODE,
    its concept the finding) and the results no image shows, as text (the overall result,
    the neural networks' scores, what did not run)."""
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    items: list[Dataset] = [
        CodeContentItem(
            name=concept(code),
            value=concept(codes.PRESENT if present else codes.ABSENT),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        for code, present in evaluations
    ]
    items += [
        TextContentItem(
            name=concept(code), value=text[:1024], relationship_type=RelationshipTypeValues.CONTAINS
        )
        for code, text in texts
    ]
    container.ContentSequence = DicomSequence(items)
    return container
