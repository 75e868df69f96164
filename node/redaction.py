"""What a log line may carry: identifiers out, whoever wrote the line.

Our own code logs UIDs hashed (``scp.uids.uid_hash``) and never a patient attribute, but the
libraries the node runs do not know that rule: highdicom warns with the patient's name
(``The string "DOE^JOHN" is unlikely to represent the intended person name``) and logs full
SOP Instance UIDs at INFO, pydicom quotes the values it cannot parse. Every record the
node's handler writes passes through ``redact`` first, Python warnings included
(``logging.captureWarnings``):

- a DICOM UID other than the standard's own (``1.2.840.10008.*``, which name SOP classes
  and transfer syntaxes, not patients) becomes its hash, as our own lines show UIDs;
- a DICOM person name (``FAMILY^GIVEN``) becomes ``<name>``;
- in a third-party record, every quoted value becomes ``'<value>'``: a library quotes
  the values of the data set it complains about, and none of them belongs in a log.
"""

from __future__ import annotations

import logging
import re

from scp.uids import uid_hash

OWN_PACKAGES = ("scp", "node", "inference", "reporting", "config", "training", "cli", "__main__")
_STANDARD_UID = "1.2.840.10008."
# digits and dots with two dots or more, not part of a longer word, a path or a number
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w.])")
_PERSON_NAME = re.compile(r"[^\s\"'^=,;:()\[\]]*\^[^\s\"'=,;:()\[\]]*")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def _uid(match: re.Match[str]) -> str:
    value = match.group(0)
    is_uid = len(value) >= 16 or value.count(".") >= 4
    if not is_uid or value.startswith(_STANDARD_UID):
        return value
    return f"uid:{uid_hash(value)}"


def redact(text: str, third_party: bool) -> str:
    """``text`` without UIDs, person names and (for a library's line) quoted values."""
    if third_party:
        text = _QUOTED.sub("'<value>'", text)
    text = _PERSON_NAME.sub("<name>", text)
    return _UID.sub(_uid, text)


class Redaction(logging.Filter):
    """A handler filter that redacts each record's message and exception text in place,
    so every formatter after it (text or JSON) writes the redacted form."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        third_party = not record.name.startswith(OWN_PACKAGES)
        record.msg = redact(record.getMessage(), third_party)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, third_party)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, third_party)
        return True
