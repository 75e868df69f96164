"""The header attributes the SCP needs, read straight from the received bytes (PS3.5 7.1).

The storage SCP validates every instance and indexes about thirty attributes of it. Reading
them through pydicom (``dcmread`` with ``specific_tags``, then one ``Dataset.get`` per
attribute) cost about 1.7 ms of CPU per instance, most of it pydicom's per-element
machinery; this reader walks the data set elements with ``struct`` and converts only the
wanted values, the way pydicom's own converters do (``pydicom.values``; the text of
character-set dependent VRs is decoded by ``pydicom.charset``), in a tenth of the time.
``tests/test_header.py`` holds it to pydicom's values on every test file.

It covers the three encodings data sets arrive in (implicit VR little endian, explicit VR
little and big endian; encapsulated syntaxes use explicit little endian). ``read`` returns
None when it cannot answer (deflated data sets, a header longer than it reads, a structure
it does not expect) and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Protocol

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.valuerep import IS, TEXT_VR_DELIMS

# The attributes validation and the index use.
HEADER_TAGS: list[str] = [
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate",
    "StudyTime", "AccessionNumber", "Modality", "StudyDescription", "SeriesDescription",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "BodyPartExamined", "SliceThickness", "ConvolutionKernel", "StudyInstanceUID",
    "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "FrameOfReferenceUID", "NumberOfFrames", "Rows", "Columns",
    "PixelSpacing",
]  # fmt: skip


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


_WANTED: dict[int, tuple[str, str]] = {_tag(k): (k, dictionary_VR(_tag(k))) for k in HEADER_TAGS}
_LAST = max(_WANTED)
_CHARSET = _tag("SpecificCharacterSet")

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")

_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_UNDEFINED = 0xFFFFFFFF
_EXPLICIT = {e: struct.Struct(e + "HH2sH") for e in "<>"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
FIRST_BYTES = 1 << 15  # a CT header up to Pixel Spacing is a few kB
_MAX_READ = 1 << 20
_TEXT_VRS = frozenset(("SH", "LO", "UC"))
_STRING_VRS = frozenset(("AE", "AS", "CS", "DA", "DT", "TM"))


class _CannotRead(Exception):
    pass


class _Truncated(_CannotRead):
    """The header goes on past the bytes read so far."""


class HeaderValues(Protocol):
    """What the SCP and the index read of a header: a pydicom ``Dataset`` or a ``Header``."""

    def get(self, keyword: str, default: Any = None, /) -> Any: ...


class Header:
    """The wanted attributes of one data set, converted; ``get`` answers like
    ``Dataset.get`` does for them (the index and ``scp.validation`` read them that way)."""

    def __init__(self, values: dict[str, Any], meta_end: int) -> None:
        self._values = values
        self.meta_end = meta_end

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values


_FAILURES = (_CannotRead, struct.error, UnicodeDecodeError, LookupError, ValueError)


def read(path: Path, transfer_syntax: str, first: bytes = b"") -> Header | None:
    """The header of a file the SCP wrote (its own File Meta, then the data set as
    received in ``transfer_syntax``), or None when pydicom has to read it. ``first``: the
    file's first bytes (up to ``FIRST_BYTES``) where the caller kept them as it wrote the
    file, which saves reading them back; the file is read only when the header goes on
    past them."""
    if transfer_syntax in DEFLATED:
        return None
    if first:
        try:
            return _parse(first, transfer_syntax, False)
        except _Truncated:
            pass
        except _FAILURES:
            return None
    with open(path, "rb") as fh:
        data = fh.read(FIRST_BYTES)
        try:
            return _parse(data, transfer_syntax, len(data) < FIRST_BYTES)
        except _Truncated:
            data += fh.read(_MAX_READ - len(data))
        except _FAILURES:
            return None
    try:
        return _parse(data, transfer_syntax, len(data) < _MAX_READ)
    except _FAILURES:
        return None


def _parse(data: bytes, transfer_syntax: str, complete: bool) -> Header:
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    little = transfer_syntax != EXPLICIT_BIG
    raw = _scan(data, meta_end, little, transfer_syntax == IMPLICIT_LITTLE, complete)
    return Header(_convert(raw, little), meta_end)


def _scan(
    data: bytes, offset: int, little: bool, implicit: bool, complete: bool
) -> dict[int, tuple[str, bytes]]:
    """Raw values (VR, bytes) of the wanted top-level elements."""
    found: dict[int, tuple[str, bytes]] = {}
    end = len(data)
    endian = "<" if little else ">"
    short = _EXPLICIT[endian]
    wanted_tags = _WANTED
    while offset < end:
        if implicit or offset + 8 > end:
            tag, vr, length, offset = _element_header(data, offset, endian, implicit)
        else:  # explicit VR, inline: most of a header's elements
            group, element, raw_vr, length = short.unpack_from(data, offset)
            tag = group << 16 | element
            if group == 0xFFFE or raw_vr in _LONG_VRS:
                tag, vr, length, offset = _element_header(data, offset, endian, implicit)
            elif 65 <= raw_vr[0] <= 90 and 65 <= raw_vr[1] <= 90:
                vr = ""
                offset += 8
            else:
                raise _CannotRead("not an explicit VR")
            if not vr and tag in wanted_tags:
                vr = raw_vr.decode()
        if tag > _LAST:
            return found
        if length == _UNDEFINED:
            offset = _skip_sequence(data, offset, endian, implicit or vr == "UN", vr, 1)
            continue
        if offset + length > end:
            raise _Truncated("element runs past the bytes read")
        wanted = wanted_tags.get(tag)
        if wanted is not None:
            found[tag] = (vr or wanted[1], data[offset : offset + length])
        offset += length
    if not complete:
        raise _Truncated("the header is longer than the bytes read")
    return found


def _element_header(
    data: bytes, offset: int, endian: str, implicit: bool
) -> tuple[int, str, int, int]:
    if offset + 8 > len(data):
        raise _Truncated("truncated element")
    group, element = struct.unpack_from(endian + "HH", data, offset)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, "", struct.unpack_from(endian + "I", data, offset + 4)[0], offset + 8
    raw_vr = data[offset + 4 : offset + 6]
    if raw_vr in _LONG_VRS:
        if offset + 12 > len(data):
            raise _Truncated("truncated element")
        return (
            tag,
            raw_vr.decode(),
            struct.unpack_from(endian + "I", data, offset + 8)[0],
            offset + 12,
        )
    if not (65 <= raw_vr[0] <= 90 and 65 <= raw_vr[1] <= 90):
        raise _CannotRead("not an explicit VR")
    return tag, raw_vr.decode(), struct.unpack_from(endian + "H", data, offset + 6)[0], offset + 8


def _skip_sequence(
    data: bytes, offset: int, endian: str, implicit: bool, vr: str, depth: int
) -> int:
    """Past a sequence of undefined length (PS3.5 7.5): items up to the delimiter. In
    explicit VR an undefined-length UN holds an implicit VR little endian sequence."""
    if depth > _MAX_DEPTH or vr not in ("", "SQ", "UN"):
        raise _CannotRead("unexpected undefined length")
    if vr == "UN":
        endian = "<"
    while True:
        tag, _vr, length, offset = _element_header(data, offset, endian, True)
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _CannotRead("sequence without items")
        if length != _UNDEFINED:
            offset += length
            continue
        while True:
            tag, item_vr, length, offset = _element_header(data, offset, endian, implicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                nested_implicit = implicit or item_vr == "UN"
                offset = _skip_sequence(data, offset, endian, nested_implicit, item_vr, depth + 1)
            else:
                offset += length
        if offset > len(data):
            raise _Truncated("sequence runs past the bytes read")


def _convert(raw: dict[int, tuple[str, bytes]], little: bool) -> dict[str, Any]:
    """pydicom's value for each element (``pydicom.values``), with its defaults: text
    stripped as pydicom strips it, DA/TM as strings, several values as a list."""
    encodings = ["iso8859"]
    if _CHARSET in raw:
        terms = _strings(raw[_CHARSET][1])
        terms = terms if isinstance(terms, list) else [terms]
        encodings = convert_encodings(terms) if any(terms) else encodings
    values: dict[str, Any] = {}
    for tag, (vr, value) in raw.items():
        keyword = _WANTED[tag][0]
        if vr == "PN":
            text = decode_bytes(value.rstrip(b"\0 "), encodings, TEXT_VR_DELIMS)
            values[keyword] = _one_or_many(text.split("\\"))
        elif vr in _TEXT_VRS:
            text = decode_bytes(value, encodings, TEXT_VR_DELIMS)
            values[keyword] = _one_or_many([v.rstrip("\0 ") for v in text.split("\\")])
        elif vr in _STRING_VRS or vr == "UI":
            values[keyword] = _strings(value)
        elif vr == "DS":
            numbers = value.decode("iso8859").rstrip(" \0").split("\\")
            values[keyword] = _one_or_many([n.strip() for n in numbers])
        elif vr == "IS":
            numbers = value.decode("iso8859").rstrip(" \0").split("\\")
            values[keyword] = _one_or_many([IS(n) if n.strip() else "" for n in numbers])
        elif vr == "US" and len(value) == 2:
            values[keyword] = struct.unpack("<H" if little else ">H", value)[0]
        else:
            raise _CannotRead(f"no conversion for VR {vr!r}")
    return values


def _strings(value: bytes) -> Any:
    return _one_or_many(value.decode("iso8859").rstrip(" \0").split("\\"))


def _one_or_many(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items
