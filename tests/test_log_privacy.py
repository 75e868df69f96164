"""No patient attribute and no full UID of the input in the log, whoever writes the line.

The whole pipeline runs black box at DEBUG on a real CT: storescu in, assembly, analysis,
the SR and secondary captures built (highdicom warns and logs about the data set it copies
from), delivery to a DCMTK PACS. Then every identifying value of the input is looked for in
the node's log.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import pydicom
import pytest

from config import LoggingSettings
from node import logs
from node.redaction import redact
from tests.conftest import testdata
from tests.node_process import NodeProcess, Pacs, require

# Attributes that identify the patient or the study (PS3.15 Annex E's basic profile, the
# ones a CT carries); values shorter than 4 characters (sex, age units) say nothing alone.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
)
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _identifiers(files: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFYING + UIDS:
            value = ds.get(keyword)
            if value is None:
                continue
            for part in value if isinstance(value, pydicom.multival.MultiValue) else [value]:
                text = str(part).strip()
                if len(text) >= 4:
                    found.add(text)
                    found.update(p for p in text.split("^") if len(p) >= 4)
    return found


def test_the_pipeline_at_debug_logs_no_identifier(tmp_path: Path) -> None:
    require("storescu")
    pacs = Pacs(tmp_path / "pacs")
    node = NodeProcess(
        tmp_path / "var",
        LOGGING__LEVEL="DEBUG",
        ASSEMBLY__STABLE_AGE="1",
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        OUTBOX__TICK="0.5",
        DESTINATIONS=json.dumps([pacs.destination]),
    )
    sources = sorted(testdata("chest-ct-100-lung").glob("*.dcm"))
    try:
        pacs.start()
        node.start()
        node.storescu(sources)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if [s["state"] for s in node.status()["series"]] == ["SENT"]:
                break
            time.sleep(1)
        assert [s["state"] for s in node.status()["series"]] == ["SENT"]
    finally:
        if node.proc is not None:
            node.stop()
        pacs.stop()
    log = node.log_text()
    assert "DEBUG" in log and "highdicom" in log  # the libraries' lines are there, redacted
    leaked = sorted(value for value in _identifiers(sources) if value in log)
    assert leaked == []


def test_library_warnings_and_records_are_redacted(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure(LoggingSettings(level="INFO"))
        warnings.warn('The string "DOE^JOHN" is unlikely to represent a name', stacklevel=1)
        logging.getLogger("highdicom.sr").info(
            'copy Patient-related attributes from dataset "1.3.6.1.4.1.9590.100.1.2.1234567"'
        )
        logging.getLogger("scp.server").info("stored 2.25.12345678901234567890 of Smith^Anne")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    err = capfd.readouterr().err
    assert "DOE" not in err and "1.3.6.1.4.1.9590" not in err and "Smith" not in err
    assert "2.25.12345678901234567890" not in err
    assert err.count("'<value>'") >= 2 and "<name>" in err and "uid:" in err


@pytest.mark.parametrize(
    ("text", "third_party", "expected"),
    [
        ("CT Image Storage 1.2.840.10008.5.1.4.1.1.2", False, "1.2.840.10008.5.1.4.1.1.2"),
        ("from 127.0.0.1 version 3.13.13", False, "from 127.0.0.1 version 3.13.13"),
        ("value 'abc' in /usr/lib/x.py", False, "value 'abc' in /usr/lib/x.py"),
        ("value 'abc'", True, "value '<value>'"),
        ("uid 1.2.3.4.5", False, "uid uid:"),
    ],
)
def test_redact(text: str, third_party: bool, expected: str) -> None:
    assert redact(text, third_party).startswith(expected) or expected in redact(text, third_party)
