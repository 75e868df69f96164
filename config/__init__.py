"""Typed, frozen node settings: ``config.load(path)`` and the example file beside it."""

from config.settings import (
    AllowedCaller,
    AssemblySettings,
    ConfigError,
    DestinationSettings,
    IntakeSettings,
    LoggingSettings,
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

__all__ = [
    "AllowedCaller",
    "AssemblySettings",
    "ConfigError",
    "DestinationSettings",
    "IntakeSettings",
    "LoggingSettings",
    "OutboxSettings",
    "ReturnAddress",
    "SCPSettings",
    "SelectionSettings",
    "Settings",
    "StorageSettings",
    "TLSSettings",
    "ValidationSettings",
    "as_dict",
    "load",
]
