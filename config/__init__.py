"""Typed, frozen node settings: ``config.load(path)`` and the example file beside it."""

from config.settings import (
    AllowedCaller,
    AssemblySettings,
    ConfigError,
    LoggingSettings,
    NeuralSettings,
    SCPSettings,
    Settings,
    StorageSettings,
    TLSSettings,
    as_dict,
    load,
)

__all__ = [
    "AllowedCaller",
    "AssemblySettings",
    "ConfigError",
    "LoggingSettings",
    "NeuralSettings",
    "SCPSettings",
    "Settings",
    "StorageSettings",
    "TLSSettings",
    "as_dict",
    "load",
]
