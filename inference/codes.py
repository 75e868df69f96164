"""Every coded concept ctnode writes, in one table: standard codes where one exists, else a
private code of ctnode's scheme ``99CTNODE`` (PS3.16 section 8: a ``99`` prefix is private;
every SR declares it in its Coding Scheme Identification Sequence).

A code value names one meaning for good: values are unique, never cut from a name, never
reused for another meaning (a retired meaning keeps its value out of use). The README's
table of codes is printed from :data:`TABLE` (``python -m inference.codes``) and a test
checks the two agree.

Measurements are post-coordinated as DICOM does (TID 300): a lung volume is (118565006, SCT,
"Volume") with the finding site Lung and, for one lung, its laterality, so only the
concepts without a standard code are private.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRIVATE_SCHEME = "99CTNODE"


@dataclass(frozen=True)
class Code:
    """A coded concept (value, scheme designator, meaning), e.g. SNOMED CT or DCM."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Entry:
    """One row of the table: the concept, the UCUM unit its values carry ("" for none)."""

    code: Code
    unit: str = ""
    note: str = ""


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def _own(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# Anatomy and qualifiers (finding sites, laterality, zones, presence).
LUNG = _sct("39607008", "Lung")
LEFT = _sct("7771000", "Left")
RIGHT = _sct("24028007", "Right")
UPPER_ZONE = _sct("281392002", "Upper zone of lung")
MIDDLE_ZONE = _sct("281393007", "Middle zone of lung")
LOWER_ZONE = _sct("281394001", "Lower zone of lung")
PRESENT = _sct("52101004", "Present")
ABSENT = _sct("2667000", "Absent")
CENTER = _dcm("111010", "Center")
# CID 100 (Quantitative Diagnostic Imaging Procedures) names no chest CT: its one CT entry.
PROCEDURE_CT = Code("25045-6", "LN", "CT unspecified body region")

# Findings.
EMPHYSEMA = _sct("87433001", "Pulmonary emphysema")
CONSOLIDATION = _sct("95436008", "Lung consolidation")
NODULE = _sct("27925004", "Nodule")
OVERALL = _own("CTN-0100", "Overall pathology assessment")
OVERALL_RESULT = _own("CTN-0101", "Overall result")
FINDING_RESULT = _own("CTN-0102", "Finding result")
NOT_RUN = _own("CTN-0103", "Analyzer not run")
ANOMALY = _own("CTN-0400", "Departure from a healthy reconstruction")
# TID 4019's row, also written as text for analyzers no measurement group names (their
# weights' hashes then still reach the report).
ALGORITHM_PARAMETERS = _dcm("111002", "Algorithm Parameters")

# Measurement concepts (values with UCUM units).
VOLUME = _sct("118565006", "Volume")
DIAMETER = _sct("81827009", "Diameter")
MEAN_ATTENUATION = _dcm("112181", "Mean Attenuation Coefficient")
PROBABILITY = _dcm("122157", "Probability")
SCORE = _own("CTN-0300", "Score (not calibrated)")
THRESHOLD = _own("CTN-0301", "Threshold for present")
LAA950 = _own("CTN-0201", "Emphysema index LAA%-950")
PERC15 = _own("CTN-0202", "Perc15 lung density")
HAA = _own("CTN-0203", "High-attenuation area -600 to -250 HU")
GGO_VOLUME = _own("CTN-0204", "Ground-glass range volume")
GGO_PERCENT = _own("CTN-0205", "Ground-glass range percentage")
CONSOLIDATION_VOLUME = _own("CTN-0206", "Consolidation range volume")
CONSOLIDATION_PERCENT = _own("CTN-0207", "Consolidation range percentage")
OPACITY_PERCENT = _own("CTN-0208", "Percentage of opacity")
VESSEL_VOLUME = _own("CTN-0209", "Excluded vessel volume")
ANOMALY_SCORE = _own("CTN-0401", "Anomaly map percentile")

# Densitometry's measurement names (inference.quant.densitometry) -> concept and unit.
MEASUREMENTS: dict[str, Entry] = {
    "Lung volume": Entry(VOLUME, "mL", "finding site Lung, laterality for one lung"),
    "Mean lung density": Entry(MEAN_ATTENUATION, "[hnsf'U]", "finding site Lung"),
    "LAA%-950": Entry(LAA950, "%", "lung below -950 HU (Gevenois 1996)"),
    "Perc15": Entry(PERC15, "[hnsf'U]", "15th percentile of lung HU"),
    "HAA% (-600 to -250 HU)": Entry(HAA, "%", "Podolanczuk 2016"),
    "Ground-glass range volume": Entry(GGO_VOLUME, "mL", "-700 to -300 HU, vessels excluded"),
    "Ground-glass range": Entry(GGO_PERCENT, "%", "-700 to -300 HU, vessels excluded"),
    "Consolidation range volume": Entry(
        CONSOLIDATION_VOLUME, "mL", "-300 to +50 HU, vessels excluded"
    ),
    "Consolidation range": Entry(CONSOLIDATION_PERCENT, "%", "-300 to +50 HU, vessels excluded"),
    "Percentage of opacity": Entry(OPACITY_PERCENT, "%", "both ranges, vessels excluded"),
    "Vessel volume": Entry(VESSEL_VOLUME, "mL", "voxels removed from the opacity ranges"),
    "Diameter": Entry(DIAMETER, "mm", "nodule candidate, longest"),
    "Volume": Entry(VOLUME, "mm3", "nodule candidate"),
    "Mean density": Entry(MEAN_ATTENUATION, "[hnsf'U]", "nodule candidate"),
    "Anomalous volume": Entry(VOLUME, "mL", "diffusion anomaly map above the card's level"),
    "Anomaly map percentile": Entry(ANOMALY_SCORE, "1", "diffusion anomaly, inside the lungs"),
}

# The 18 CT-RATE labels (DESIGN.md): SNOMED CT where one names the finding, else private.
CT_RATE_SNOMED = {
    "Cardiomegaly": _sct("8186001", "Cardiomegaly"),
    "Pericardial effusion": _sct("373945007", "Pericardial effusion"),
    "Hiatal hernia": _sct("84089009", "Hiatal hernia"),
    "Lymphadenopathy": _sct("30746006", "Lymphadenopathy"),
    "Emphysema": EMPHYSEMA,
    "Atelectasis": _sct("46621007", "Atelectasis"),
    "Lung nodule": NODULE,
    "Pleural effusion": _sct("60046008", "Pleural effusion"),
    "Consolidation": CONSOLIDATION,
    "Bronchiectasis": _sct("12295008", "Bronchiectasis"),
}

# Values that once meant something else: never to be used again.
RETIRED = {
    "CTN-0001": "Lung opacity of the quantitative analyzer (now the label's CTRATE-11)",
    "CTN-0002": "Lung nodule candidate (now SCT 27925004 Nodule)",
    "CTRATE-10": "Lung nodule (now SCT 27925004 Nodule)",
    "SCORE": "Finding score (now CTN-0300)",
    "PROB": "Finding probability (now DCM 122157)",
}


# The 18 CT-RATE abnormality labels: the shared vocabulary of the findings
# (``inference.findings``, DESIGN.md "Findings model").
CT_RATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


# Labels beyond CT-RATE's 18 that the seeds' MedNeXt classifier reports (its model card,
# ``inference.mednext.card.DEFAULT_LABELS``), with their codes.
MEDNEXT_EXTRA = {
    "Pneumothorax": _sct("36118008", "Pneumothorax"),
    "Lung mass": _own("CTN-0500", "Lung mass"),
    "Pleural thickening": _own("CTN-0501", "Pleural thickening"),
    "Rib fracture": _own("CTN-0502", "Rib fracture"),
}
MEDNEXT_EXTRA_LABELS: tuple[str, ...] = tuple(MEDNEXT_EXTRA)
# Prefix of the codes derived for a site's labels the table does not know (finding_code).
DERIVED_PREFIX = "CTNL-"


def label_code(label: str) -> Code:
    """The code of a CT-RATE label: SNOMED CT where one exists, else ``CTRATE-nn``."""
    if label not in CT_RATE_LABELS:
        raise ValueError(f"{label!r} is not a CT-RATE label")
    if label in CT_RATE_SNOMED:
        return CT_RATE_SNOMED[label]
    return Code(f"CTRATE-{CT_RATE_LABELS.index(label) + 1:02d}", PRIVATE_SCHEME, label)


def finding_code(label: str) -> Code:
    """The code of any finding label a model card names: a CT-RATE label's
    (:func:`label_code`), one of :data:`MEDNEXT_EXTRA`, else a private code derived from the
    label alone, so the same label gets the same code on every node and every run:
    ``CTNL-`` and the first 10 hex digits of the sha256 of the label with its white space
    collapsed and its case folded, meaning the label as written. These values are outside
    the table's (no other code starts ``CTNL-``) and never retired: a different label is a
    different code."""
    if label in CT_RATE_LABELS:
        return label_code(label)
    if label in MEDNEXT_EXTRA:
        return MEDNEXT_EXTRA[label]
    key = " ".join(label.split()).casefold()
    if not key:
        raise ValueError("a finding label must not be empty")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    return Code(f"{DERIVED_PREFIX}{digest}", PRIVATE_SCHEME, label.strip()[:64])


def measurement(name: str) -> Entry:
    """The concept of a named measurement, or ``KeyError`` naming what is missing."""
    try:
        return MEASUREMENTS[name]
    except KeyError:
        raise KeyError(f"no code for measurement {name!r}: add it to inference.codes") from None


def table() -> list[Entry]:
    """Every concept ctnode writes, once each, in the order of this module."""
    rows: list[Entry] = [Entry(c) for c in (LUNG, LEFT, RIGHT, UPPER_ZONE, MIDDLE_ZONE)]
    rows += [Entry(c) for c in (LOWER_ZONE, PRESENT, ABSENT, CENTER, PROCEDURE_CT)]
    rows += [Entry(c) for c in (EMPHYSEMA, CONSOLIDATION, NODULE, OVERALL)]
    rows += [Entry(c) for c in (OVERALL_RESULT, FINDING_RESULT, NOT_RUN, ANOMALY)]
    rows += [Entry(ALGORITHM_PARAMETERS)]
    rows += [Entry(PROBABILITY, "{probability}"), Entry(SCORE, "{score}")]
    rows += [Entry(THRESHOLD, "unit of the measure")]
    rows += list(MEASUREMENTS.values())
    rows += [Entry(label_code(label)) for label in CT_RATE_LABELS]
    rows += [Entry(code) for code in MEDNEXT_EXTRA.values()]
    merged: dict[tuple[str, str], Entry] = {}
    for row in rows:
        key = (row.code.value, row.code.scheme)
        if key not in merged:
            merged[key] = row
        elif row.unit and row.unit not in merged[key].unit.split(", "):
            units = ", ".join(u for u in (merged[key].unit, row.unit) if u)
            merged[key] = Entry(row.code, units, merged[key].note)
    return list(merged.values())


def markdown() -> str:
    """The README's table: code, scheme, meaning, unit."""
    lines = ["| code | scheme | meaning | unit |", "|---|---|---|---|"]
    for row in table():
        unit = ", ".join(f"`{u}`" for u in row.unit.split(", ")) if row.unit else ""
        lines.append(f"| `{row.code.value}` | {row.code.scheme} | {row.code.meaning} | {unit} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
