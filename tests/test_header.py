"""The SCP's lean header reader (``scp.header``) against pydicom: for every test file, in
every encoding, with character sets, sequences and odd structures, the identity and every
value the index stores are the ones pydicom's ``dcmread`` gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from node.index.instances import _float, _int, _multi, _text
from scp import header, upper_layer
from scp.validation import check_identity
from tests.conftest import TESTDATA
from tests.factory import ct_series

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def _as_received(folder: Path, name: str, dataset_bytes: bytes, ds: Any, syntax: str) -> Path:
    """A file as the SCP writes it: its own File Meta, then the data set bytes as sent."""
    path = folder / name
    meta = upper_layer.file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, "SCU")
    path.write_bytes(meta + dataset_bytes)
    return path


def _encode(ds: Dataset, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax != header.EXPLICIT_BIG
    buffer.is_implicit_VR = syntax == header.IMPLICIT_LITTLE
    write_dataset(buffer, ds)
    return buffer.getvalue()


# How node/index.py reads each attribute.
_MULTI = ("ImageType", "ConvolutionKernel", "ImagePositionPatient", "ImageOrientationPatient")
_READ_AS = {
    **{k: _multi for k in (*_MULTI, "PixelSpacing")},
    **{k: _int for k in ("SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns")},
    "SliceThickness": _float,
}


def _indexed(values: Any) -> list[tuple[str, Any]]:
    return [(k, _READ_AS.get(k, _text)(values, k)) for k in header.HEADER_TAGS]


def _assert_same(path: Path, syntax: str) -> None:
    fast = header.read(path, syntax)
    assert fast is not None, path.name
    slow = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=header.HEADER_TAGS)
    assert _indexed(fast) == _indexed(slow), path.name
    command = (str(slow.get("SOPClassUID", "")), str(slow.get("SOPInstanceUID", "")))
    assert check_identity(fast, *command) == check_identity(slow, *command)
    assert fast.meta_end == 144 + int(slow.file_meta.FileMetaInformationGroupLength)
    # The SCP hands over the bytes it kept as it wrote the file: the same values, whether
    # the header ends inside them or the file has to be read on.
    first = path.read_bytes()[: header.FIRST_BYTES]
    kept = header.read(path, syntax, first)
    assert kept is not None and _indexed(kept) == _indexed(fast), path.name


def _test_files() -> list[Path]:
    if not TESTDATA.is_dir():
        return []
    return sorted(
        p for p in TESTDATA.rglob("*") if p.is_file() and p.name not in ("DICOMDIR", "DIRFILE")
    )


def test_every_test_file_reads_as_pydicom_reads_it(tmp_path: Path) -> None:
    checked = 0
    for k, source in enumerate(_test_files()):
        try:
            ds = pydicom.dcmread(source, stop_before_pixels=True)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            ds.SOPInstanceUID  # noqa: B018 (an image, not a directory record)
        except Exception:  # not a DICOM file of an image: nothing to compare
            continue
        if syntax in header.DEFLATED:
            continue
        raw = source.read_bytes()
        offset = 132 + 12 + int.from_bytes(raw[140:144], "little")
        _assert_same(_as_received(tmp_path, f"{k}.dcm", raw[offset:], ds, syntax), syntax)
        checked += 1
    if checked == 0:
        pytest.skip(f"no real test data under {TESTDATA}")
    assert checked > 300


@pytest.mark.parametrize("syntax", [header.IMPLICIT_LITTLE, EXPLICIT_LITTLE, header.EXPLICIT_BIG])
@pytest.mark.parametrize(
    ("charset", "name"),
    [
        (None, "TEST^PATIENT"),
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Ωmega^Ünïcode=Ωμέγα"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
)
def test_encodings_and_character_sets(tmp_path: Path, syntax: str, charset: Any, name: str) -> None:
    ds = ct_series(1, 8, 8, seed=f"charset{name}")[0]
    del ds.PixelData
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = name.split("=")[-1]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber = " 7"
    path = _as_received(tmp_path, "a.dcm", _encode(ds, syntax), ds, syntax)
    _assert_same(path, syntax)


@pytest.mark.parametrize("syntax", [header.IMPLICIT_LITTLE, EXPLICIT_LITTLE])
def test_sequences_of_undefined_length_are_skipped(tmp_path: Path, syntax: str) -> None:
    ds = ct_series(1, 8, 8, seed="sequences")[0]
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.3"
    nested = Dataset()
    nested.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.ReferencedImageSequence.is_undefined_length = True
    for seq_item in ds.ReferencedImageSequence:
        seq_item.is_undefined_length_sequence_item = True
    item.PurposeOfReferenceCodeSequence.is_undefined_length = True
    path = _as_received(tmp_path, "seq.dcm", _encode(ds, syntax), ds, syntax)
    _assert_same(path, syntax)


def test_what_it_cannot_read_is_left_to_pydicom(tmp_path: Path) -> None:
    ds = ct_series(1, 8, 8, seed="fallback")[0]
    data = _encode(ds, EXPLICIT_LITTLE)
    path = _as_received(tmp_path, "d.dcm", data, ds, "1.2.840.10008.1.2.1.99")
    assert header.read(path, "1.2.840.10008.1.2.1.99") is None  # deflated
    cut = _as_received(tmp_path, "cut.dcm", data[:40], ds, EXPLICIT_LITTLE)
    assert header.read(cut, EXPLICIT_LITTLE) is None  # ends inside an element


def test_garbage_is_left_to_pydicom(tmp_path: Path) -> None:
    ds = ct_series(1, 8, 8, seed="garbage")[0]
    path = _as_received(tmp_path, "g.dcm", b"\xff\xfe garbage, not a data set" * 3, ds, "1.2")
    assert header.read(path, EXPLICIT_LITTLE) is None


@pytest.mark.parametrize("syntax", [header.IMPLICIT_LITTLE, EXPLICIT_LITTLE])
def test_a_header_longer_than_the_first_read(tmp_path: Path, syntax: str) -> None:
    ds = ct_series(1, 8, 8, seed="long header")[0]
    ds.private_block(0x0019, "CTNODE TEST", create=True).add_new(0x01, "OB", b"\1" * 100_000)
    path = _as_received(tmp_path, "long.dcm", _encode(ds, syntax), ds, syntax)
    _assert_same(path, syntax)
    ds.private_block(0x0019, "CTNODE TEST").add_new(0x01, "OB", b"\1" * 1_100_000)
    huge = _as_received(tmp_path, "huge.dcm", _encode(ds, syntax), ds, syntax)
    assert header.read(huge, syntax) is None  # past the most it reads: pydicom's turn


def test_kept_bytes_spare_reading_the_file(tmp_path: Path) -> None:
    ds = ct_series(1, 8, 8, seed="kept")[0]
    path = _as_received(tmp_path, "kept.dcm", _encode(ds, EXPLICIT_LITTLE), ds, EXPLICIT_LITTLE)
    first = path.read_bytes()[: header.FIRST_BYTES]
    path.unlink()
    kept = header.read(path, EXPLICIT_LITTLE, first)
    assert kept is not None and kept.get("SOPInstanceUID") == ds.SOPInstanceUID
