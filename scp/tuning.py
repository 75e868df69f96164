"""Settings that make pydicom cheaper in the long-running service.

pydicom validates every value set on or read from a Dataset with regular expressions; on the
receive path that was about 15 % of the time per instance. The node checks the values it
relies on itself (``scp.validation``), so the service turns pydicom's checks off; tests keep
them on.
"""

from __future__ import annotations

import pydicom.config


def quiet_pydicom_validation() -> None:
    """Skip pydicom's per-value regex validation in the long-running service."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
