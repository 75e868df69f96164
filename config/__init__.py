"""Typed, frozen node settings: ``config.load(path)`` and the example file beside it; the
software version (``config.__version__``).
"""

from config.settings import (
    AllowedCaller,
    AnomalySettings,
    ApiTLSSettings,
    AssemblySettings,
    ConfigError,
    DestinationSettings,
    FusionSettings,
    IntakeSettings,
    LoggingSettings,
    NeuralSettings,
    OutboxSettings,
    ReturnAddress,
    SCPSettings,
    SelectionSettings,
    Settings,
    StorageSettings,
    TLSSettings,
    ValidationSettings,
    as_dict,
    load,
)
from config.version import __version__

__all__ = [
    "AllowedCaller",
    "AnomalySettings",
    "ApiTLSSettings",
    "AssemblySettings",
    "ConfigError",
    "DestinationSettings",
    "FusionSettings",
    "IntakeSettings",
    "LoggingSettings",
    "NeuralSettings",
    "OutboxSettings",
    "ReturnAddress",
    "SCPSettings",
    "SelectionSettings",
    "Settings",
    "StorageSettings",
    "TLSSettings",
    "ValidationSettings",
    "__version__",
    "as_dict",
    "load",
]
