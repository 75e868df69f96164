"""The SOP classes the node stores and the transfer syntaxes it accepts them in."""

from __future__ import annotations

from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
from pynetdicom.presentation import AllStoragePresentationContexts

CT_STORAGE: frozenset[str] = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)

VERIFICATION = "1.2.840.10008.1.1"

# Every transfer syntax pydicom knows, compressed ones included: instances are stored as
# received, never decoded here, so a syntax the analysis cannot decode is still accepted and
# kept (loading reports it as unsupported instead of the scanner seeing a failed push).
# The retired JPEG "extended" processes 3 and 5 still occur in old archives.
RETIRED_JPEG = ("1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55")
TRANSFER_SYNTAXES: tuple[str, ...] = (*(str(ts) for ts in AllTransferSyntaxes), *RETIRED_JPEG)


def other_storage_classes() -> list[str]:
    """Storage SOP classes other than CT (dose SRs, secondary captures, ...)."""
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return [uid for uid in classes if uid not in CT_STORAGE]


def is_ct(sop_class_uid: str) -> bool:
    return UID(sop_class_uid) in CT_STORAGE
