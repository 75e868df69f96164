"""The node's one frozen settings object, loaded from TOML with environment overrides.

Every key lives in a section dataclass below and is documented, with its default, in
``config/node.example.toml``; a test keeps the two in step. Environment variables override
the file: ``CTNODE_<SECTION>__<KEY>`` (for example ``CTNODE_SCP__PORT=11112``), parsed by the
type of the field they replace, so deployment scripts need no file at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "CTNODE_"
# The PDU sizes the SCP may advertise (PS3.8 D.1: a receiver may limit its PDUs; each
# association holds one buffer of its largest PDU).
MIN_PDU_SIZE, MAX_PDU_SIZE = 4096, 16 * 2**20


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the key that is wrong."""


@dataclass(frozen=True)
class AllowedCaller:
    """A calling AE title the SCP accepts, optionally only from one address or network, and
    only with one TLS client certificate: its subject common name, or its SHA-256
    fingerprint (64 hex digits, colons allowed)."""

    ae_title: str
    network: str = ""
    certificate: str = ""


@dataclass(frozen=True)
class TLSSettings:
    """DICOM TLS (PS3.15 Annex B.9/B.10, BCP 195): server certificate, optional client
    verification, the profile of allowed versions and suites (``scp.tls`` builds it)."""

    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    private_key_passphrase_file: str = ""
    ca_certificates: str = ""
    require_client_certificate: bool = False
    profile: Literal["bcp195-nd", "bcp195"] = "bcp195-nd"
    min_version: Literal["1.2", "1.3"] = "1.2"


@dataclass(frozen=True)
class SCPSettings:
    """The storage SCP: identity, listening address, association policy, and a limit on
    every resource a peer can make it hold (connections, memory, time)."""

    ae_title: str = "CTNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    require_called_ae_title: bool = True
    allowed_callers: tuple[AllowedCaller, ...] = ()
    max_associations: int = 16
    max_associations_per_address: int = 8
    max_unassociated: int = 16
    max_unassociated_per_address: int = 8
    acse_timeout: float = 15.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu_size: int = 1048576
    max_command_bytes: int = 65536
    other_storage: Literal["discard", "reject"] = "discard"
    max_instance_mb: int = 2048
    min_free_disk_mb: int = 1024
    processes: int = 1
    tls: TLSSettings = field(default_factory=TLSSettings)

    def __post_init__(self) -> None:
        for name in (
            "max_associations",
            "max_associations_per_address",
            "max_unassociated",
            "max_unassociated_per_address",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"scp.{name} must be at least 1, not {getattr(self, name)}")
        if self.max_pdu_size != 0 and not MIN_PDU_SIZE <= self.max_pdu_size <= MAX_PDU_SIZE:
            raise ValueError(
                f"scp.max_pdu_size must be 0 or from {MIN_PDU_SIZE} to {MAX_PDU_SIZE} bytes, "
                f"not {self.max_pdu_size}"
            )
        if not 1024 <= self.max_command_bytes <= MAX_PDU_SIZE:
            raise ValueError(
                f"scp.max_command_bytes must be from 1024 to {MAX_PDU_SIZE}, "
                f"not {self.max_command_bytes}"
            )
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"scp.{name} must be a positive number of seconds")

    @property
    def pdu_limit(self) -> int:
        """The largest P-DATA PDU body the SCP advertises and accepts: ``max_pdu_size``, or
        with 0 ("unlimited") the largest it will hold in memory."""
        return self.max_pdu_size or MAX_PDU_SIZE


@dataclass(frozen=True)
class StorageSettings:
    """Where received instances, the database and outputs live."""

    data_dir: str = "./var"
    fsync: bool = True

    @property
    def root(self) -> Path:
        return Path(self.data_dir)


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the index lives: empty ``url`` = SQLite in the data directory (one host);
    a ``postgresql://`` URL = a PostgreSQL database several hosts share."""

    url: str = ""
    pool_size: int = 8

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("database.url must be empty (SQLite) or a postgresql:// URL")
        if self.pool_size < 1:
            raise ValueError(f"database.pool_size must be at least 1, not {self.pool_size}")


@dataclass(frozen=True)
class ClusterSettings:
    """Several processes over one index: who this process is, how often it beats, and how
    long without a beat its claims last (jobs and deliveries on SQLite; deliveries and, through
    procrastinate's worker heartbeats, jobs over PostgreSQL)."""

    node_id: str = ""
    lease: float = 60.0
    heartbeat: float = 10.0
    orphan_age: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat < self.lease:
            raise ValueError("cluster.heartbeat must be above 0 and below cluster.lease")


@dataclass(frozen=True)
class AssemblySettings:
    """When a series counts as complete: no new instance for ``stable_age`` seconds."""

    stable_age: float = 30.0
    tick: float = 1.0


@dataclass(frozen=True)
class LoggingSettings:
    """Log level and format; logs never carry patient attributes, UIDs only hashed."""

    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class DestinationSettings:
    """A DICOM destination for results (a PACS): called AE title, address, optional TLS."""

    name: str
    host: str
    port: int
    ae_title: str
    calling_ae_title: str = ""
    default: bool = True
    tls: bool = False
    tls_ca_certificates: str = ""
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_private_key_passphrase_file: str = ""
    tls_profile: Literal["bcp195-nd", "bcp195"] = "bcp195-nd"
    tls_min_version: Literal["1.2", "1.3"] = "1.2"


@dataclass(frozen=True)
class ReturnAddress:
    """Where results go back to when they return to the sender: one per calling AE title."""

    calling_ae_title: str
    host: str
    port: int
    ae_title: str


@dataclass(frozen=True)
class OutboxSettings:
    """Delivery of results: retries with exponential backoff, then a visible failure."""

    max_attempts: int = 8
    max_age_hours: float = 24.0
    backoff_initial: float = 10.0
    backoff_max: float = 600.0
    tick: float = 2.0
    timeout: float = 30.0
    return_to_sender: bool = False
    return_addresses: tuple[ReturnAddress, ...] = ()


@dataclass(frozen=True)
class WorkerSettings:
    """Analysis workers: how many jobs run at once, how often an idle one looks, and how
    long a stop waits for a running stage before the process exits anyway."""

    count: int = 1
    poll: float = 1.0
    grace: float = 30.0
    report_not_analysed: bool = False


@dataclass(frozen=True)
class ApiTLSSettings:
    """HTTPS for the API and the dashboard: a PEM certificate (chain) and its private key,
    loaded at start-up; TLS 1.2 or later."""

    enabled: bool = False
    certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API: address and bearer token (required beyond loopback); the caps on an
    upload's size and on the time to receive it, and how long ``POST /predict`` waits for
    its result before it answers with the job to poll instead; how long a dashboard
    session lasts, and the longest wait imposed on an address after wrong sign-ins."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""
    max_upload_mb: int = 2048
    upload_timeout: float = 600.0
    predict_timeout: float = 300.0
    session_hours: float = 12.0
    sign_in_delay_max: float = 300.0
    tls: ApiTLSSettings = field(default_factory=ApiTLSSettings)


@dataclass(frozen=True)
class ValidationSettings:
    """When a series is fit for analysis (``inference.validation``, ``inference.chest``)."""

    min_slices: int = 20
    gap_factor: float = 1.5
    max_tilt_degrees: float = 1.0
    max_obliquity_degrees: float = 10.0
    min_lung_area_cm2: float = 30.0
    min_lung_extent_mm: float = 60.0


@dataclass(frozen=True)
class SelectionSettings:
    """Which series of a study to analyse: kernel preference lists (``inference.selection``)."""

    lung_kernels: tuple[str, ...] = (
        "LUNG",
        "B60f",
        "B70f",
        "B80f",
        "Br60",
        "Br64",
        "Bl57",
        "Bl64",
        "I70f",
        "FC51",
        "FC52",
        "FC53",
        "FC55",
        "FC56",
        "FC86",
        "YA",
        "YB",
        "L",
        "BONEPLUS",
        "SHARP",
    )
    soft_kernels: tuple[str, ...] = (
        "STANDARD",
        "SOFT",
        "B30f",
        "B31f",
        "B35f",
        "B40f",
        "B41f",
        "Br36",
        "Br40",
        "Bf37",
        "I30f",
        "I40f",
        "FC03",
        "FC07",
        "FC08",
        "FC17",
        "FC18",
        "YC",
        "A",
        "B",
        "C",
    )


@dataclass(frozen=True)
class IntakeSettings:
    """Limits on uploaded or given archives (zip bombs, huge uploads)."""

    max_total_mb: int = 4096
    max_ratio: float = 200.0
    max_entries: int = 100000


@dataclass(frozen=True)
class AnomalySettings:
    """The diffusion anomaly detector (``inference.anomaly``): which procedure runs, on which
    lung slices.

    ``mode``: ``full`` runs the model card's procedure (about 1,500 network evaluations per
    slice) and only on a GPU: without one the detector does not run and every output says
    why; ``reduced`` runs anywhere with ``reduced_steps`` respaced timesteps and at most
    ``reduced_max_slices`` slices, and every output says it is reduced; ``off`` never runs.
    ``slices``: ``stride`` takes every ``slice_stride``-th axial slice inside the lungs,
    ``flagged`` the lung slices where the quantitative analysis drew an overlay (emphysema,
    ground glass, consolidation), most covered first; at most ``max_slices`` either way,
    in batches of ``batch_size`` on the device.
    """

    mode: Literal["full", "reduced", "off"] = "full"
    slices: Literal["stride", "flagged"] = "stride"
    slice_stride: int = 4
    max_slices: int = 64
    batch_size: int = 8
    reduced_steps: int = 20
    reduced_max_slices: int = 4

    def __post_init__(self) -> None:
        for key in ("slice_stride", "max_slices", "batch_size", "reduced_max_slices"):
            if getattr(self, key) < 1:
                raise ValueError(f"neural.anomaly.{key} must be at least 1")
        if self.reduced_steps < 4:
            raise ValueError("neural.anomaly.reduced_steps must be at least 4")


@dataclass(frozen=True)
class NeuralSettings:
    """Neural analyzers (CT-CLIP): where verified weights live and how inference runs.

    ``models`` names the registered weights to run when the manifest holds several for one
    analyzer (e.g. CT-CLIP_v2 and VocabFine_v2, both zero-shot); empty = the first
    registered of each. ``bf16_autocast`` applies on CUDA, ``cpu_bf16`` on the CPU; both
    are off by default: on generated weights of the published shape bf16 moved a
    probability by up to 0.09 (2.7 % of the tokens pick another codebook row), beyond the
    1e-2 we accept, so a site turns it on only after ``benchmarks/ctclip.py`` shows its
    weights stay within that. ``device`` places every neural analyzer (``auto``: CUDA when present);
    ``organs_fast`` runs TotalSegmentator's 3 mm model for fVLM's organ masks instead of the
    full 1.5 mm models fVLM was trained on.
    """

    weights_dir: str = "weights"
    cpu_threads: int = 2
    bf16_autocast: bool = False
    cpu_bf16: bool = False
    models: tuple[str, ...] = ()
    # every neural analyzer's device ("auto": CUDA when present) and TotalSegmentator's mode for
    # fVLM's organ masks (fast: the 3 mm model; full, the default: the five 1.5 mm models fVLM
    # was trained on).
    device: str = "auto"
    organs_fast: bool = False
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)

    def __post_init__(self) -> None:
        if self.cpu_threads < 1:
            raise ValueError(f"neural.cpu_threads must be at least 1, not {self.cpu_threads}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(
                f"neural.device must be auto, cpu, cuda or cuda:N, not {self.device!r}"
            )


@dataclass(frozen=True)
class FusionSettings:
    """How the analyzers' findings become the overall result (``inference.fusion``).

    With ``model`` empty the rule-based fusion runs: ``pathology`` is 1 when
    ``probability_of_pathology`` reaches ``threshold``, and only findings at or above it
    compete for ``most_dangerous_pathology_type``. ``model`` names a trained fusion model in
    the weights store (``ctnode fusion train``); it brings its own threshold, chosen at
    training, and reports its ``top_k`` largest SHAP contributions. The rule-based fusion
    reads the findings of ``rule_analyzers`` only: scores whose 0.5 is a decision threshold.
    CT-CLIP's zero-shot probabilities are not (its authors choose a threshold per label on
    validation data), so they are reported and feed a trained model, but decide nothing by
    default.
    """

    threshold: float = 0.5
    model: str = ""
    top_k: int = 5
    rule_analyzers: tuple[str, ...] = ("quantitative",)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"fusion.threshold must be in (0, 1], not {self.threshold}")
        if not 1 <= self.top_k <= 50:
            raise ValueError(f"fusion.top_k must be from 1 to 50, not {self.top_k}")


@dataclass(frozen=True)
class Settings:
    """Everything the node can be told, as one immutable value."""

    scp: SCPSettings = field(default_factory=SCPSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    assembly: AssemblySettings = field(default_factory=AssemblySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    destinations: tuple[DestinationSettings, ...] = ()
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    neural: NeuralSettings = field(default_factory=NeuralSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path`` (optional) with ``environ`` overrides applied on top."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    _apply_environment(raw, os.environ if environ is None else environ)
    settings: Settings = _build(Settings, raw, "")
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain nested dict of ``settings``, for ``ctnode config`` and the API."""
    return dataclasses.asdict(settings)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    top_level = {f.name for f in dataclasses.fields(Settings)}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) == 1 and parts[0] not in top_level:
            continue  # CTNODE_SOMETHING that is not ours
        target = raw
        for part in parts[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{name}: {'.'.join(parts[:-1])} is not a section")
            target = nested
        target[parts[-1]] = _EnvText(value)


class _EnvText(str):
    """A value that came from the environment: parsed by the field's type, not TOML's."""


def _build(cls: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'configuration'} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])}")
    values = {
        name: _coerce(hints[name], raw[name], _join(where, name)) for name in names if name in raw
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'configuration'}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, _EnvText):
            value = _parse_json(value, where)
        return _build(hint, value, where)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if isinstance(value, _EnvText):
            value = _parse_json(value, where)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return tuple(_coerce(item_type, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, allowed))}")
        return str(value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported type {hint}")
    if hint is bool:
        if isinstance(value, _EnvText):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, not {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, not {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {hint}")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: environment value is not JSON: {exc.msg}") from exc


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
