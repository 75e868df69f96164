"""The weights store: ``weights/manifest.toml``, sha256 verification, import and fetch.

Nothing here runs at analysis time except :func:`status`, which verifies files (hashes cached by
size and mtime in ``.sha256-cache.json`` beside the weights, so a 1.8 GB checkpoint is hashed
once). :func:`fetch` is only called by ``ctnode weights fetch``: the node never downloads at run
time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CHUNK = 8 << 20
CACHE_NAME = ".sha256-cache.json"
State = Literal["present", "missing", "corrupt"]


class WeightsError(ValueError):
    """A manifest, file or download problem; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class ModelEntry:
    """One ``[[models]]`` table of the manifest.

    Optional for CT-CLIP checkpoints: ``architecture``, a JSON file in the store with the
    architecture's hyperparameters when they are not the published ones (the form of
    ``shared/models/ctclip-tiny-reference/tiny_config.json``), and ``vocab``, the tokenizer's
    ``vocab.txt`` from which the prompt latents are computed once and cached.

    A model made of two checkpoints (the diffusion anomaly detector: the diffusion UNet in
    ``file``, its classifier in ``companion``) names the second with its own
    ``companion_sha256`` and ``companion_size``, verified like ``file``; ``card`` is a JSON
    model card in the store (how the model is applied: image size, window, thresholds).
    """

    name: str
    version: str
    file: str
    sha256: str
    size: int
    licence: str
    source: str
    analyzer: str
    architecture: str = ""
    vocab: str = ""
    companion: str = ""
    companion_sha256: str = ""
    companion_size: int = 0
    card: str = ""


FIELDS = ("name", "version", "file", "sha256", "size", "licence", "source", "analyzer")
OPTIONAL_FIELDS = (
    "architecture",
    "vocab",
    "companion",
    "companion_sha256",
    "companion_size",
    "card",
)
SIDE_FILES = ("architecture", "vocab", "companion", "card")
HEADER = (
    "# Model weights the analyzers load, verified by sha256 before use.\n"
    "# One [[models]] table per file: name, version, file, sha256, size, licence, source, "
    "analyzer;\n# CT-CLIP checkpoints may add architecture (JSON) and vocab (vocab.txt); a model\n"
    "# of two checkpoints adds companion, companion_sha256, companion_size and a card (JSON).\n"
)


def _plain_name(name: str) -> bool:
    return Path(name).name == name and name not in ("", ".", "..")


def read_manifest(path: Path) -> list[ModelEntry]:
    """Parse and validate the manifest; file names must be plain names inside the store."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError("bad-manifest", f"{path}: {exc}") from exc
    entries: list[ModelEntry] = []
    for i, table in enumerate(raw.get("models", [])):
        missing = [f for f in FIELDS if f not in table]
        if missing:
            raise WeightsError("bad-manifest", f"model #{i + 1} lacks {', '.join(missing)}")
        entry = ModelEntry(**{f: table[f] for f in FIELDS + OPTIONAL_FIELDS if f in table})
        for key in ("file", *SIDE_FILES):
            value = getattr(entry, key)
            if (key == "file" or value) and not _plain_name(value):
                raise WeightsError("bad-manifest", f"{entry.name}: {key} must be a plain name")
        hashes = [("sha256", entry.sha256)]
        if entry.companion:
            hashes.append(("companion_sha256", entry.companion_sha256))
        for key, digest in hashes:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise WeightsError("bad-manifest", f"{entry.name}: {key} must be 64 lower-case hex")
        entries.append(entry)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise WeightsError("bad-manifest", "model names must be unique")
    return entries


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, reusing the store's cache while size and mtime are unchanged."""
    cache_file = path.parent / CACHE_NAME
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(path.name)
    if isinstance(hit, dict) and hit.get("key") == key:
        return str(hit["sha256"])
    digest = sha256_file(path)
    cache[path.name] = {"key": key, "sha256": digest}
    tmp = cache_file.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.warning("cannot write the hash cache: %s", exc)
    return digest


def status(store: Path, entry: ModelEntry) -> tuple[State, str]:
    """``present``, ``missing`` or ``corrupt`` with a sentence saying why (the entry's file,
    then its companion checkpoint if it has one)."""
    files = [(entry.file, entry.size, entry.sha256)]
    if entry.companion:
        files.append((entry.companion, entry.companion_size, entry.companion_sha256))
    for name, expected_size, expected in files:
        path = store / name
        if not path.is_file():
            return "missing", f"{name} is not in {store}"
        size = path.stat().st_size
        if size != expected_size:
            return "corrupt", f"{name} has {size} bytes, the manifest says {expected_size}"
        digest = cached_sha256(path)
        if digest != expected:
            return "corrupt", f"{name} sha256 {digest[:12]}... != {expected[:12]}..."
    verified = " and ".join(name for name, _, _ in files)
    return "present", f"{verified} verified"


def find(entries: list[ModelEntry], name: str) -> ModelEntry:
    """The entry called ``name``, or a clear error listing the known names."""
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries) or "none"
    raise WeightsError("unknown-model", f"{name!r} is not in the manifest (known: {known})")


def import_file(store: Path, entry: ModelEntry, source: Path) -> Path:
    """Verify a file a site obtained and copy it into the store (atomic rename)."""
    if not source.is_file():
        raise WeightsError("no-file", f"{source} does not exist")
    if source.stat().st_size != entry.size:
        raise WeightsError("size-mismatch", f"{source.name} is not {entry.size} bytes")
    digest = sha256_file(source)
    if digest != entry.sha256:
        raise WeightsError("hash-mismatch", f"{source.name} sha256 {digest} != {entry.sha256}")
    target = _copy_into(store, source, entry.file)
    cached_sha256(target)
    return target


def _copy_into(store: Path, source: Path, name: str) -> Path:
    """``source`` as ``store/name``, copied beside it then renamed (never half a file);
    nothing to do when it is that file already."""
    store.mkdir(parents=True, exist_ok=True)
    target = store / name
    if source.resolve() != target.resolve():
        part = store / (name + ".importing")
        shutil.copyfile(source, part)
        os.replace(part, target)
    return target


def fetch(
    store: Path,
    entry: ModelEntry,
    token: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``entry.source`` with resume (HTTP Range on ``<file>.part``) and verify sha256."""
    store.mkdir(parents=True, exist_ok=True)
    target = store / entry.file
    part = store / (entry.file + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > entry.size:
        part.unlink()
        have = 0
    if have < entry.size:
        request = urllib.request.Request(entry.source)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except OSError as exc:
            raise WeightsError("download-failed", f"{entry.name}: {exc}") from exc
        with response:
            if have and response.status != 206:
                have = 0
            with part.open("ab" if have else "wb") as fh:
                done = have
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, entry.size)
    digest = sha256_file(part)
    if digest != entry.sha256:
        part.unlink()
        raise WeightsError("hash-mismatch", f"{entry.name}: downloaded sha256 {digest} is wrong")
    os.replace(part, target)
    cached_sha256(target)
    return target


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` (temporary file, fsync, rename); its sha256."""
    tmp = path.with_name(path.name + ".writing")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def update_manifest(path: Path, new: tuple[ModelEntry, ...]) -> None:
    """Replace the entries of the same names (or add them) and keep the others; the file is
    rewritten atomically with the standard header comment."""
    existing = read_manifest(path) if path.is_file() else []
    names = {e.name for e in new}
    entries = [e for e in existing if e.name not in names] + list(new)
    body = [HEADER]
    if not entries:
        body.append("models = []\n")
    for entry in entries:
        body.append("\n[[models]]\n")
        for key in FIELDS + OPTIONAL_FIELDS:
            value = getattr(entry, key)
            if key in OPTIONAL_FIELDS and not value:
                continue
            text = str(value) if isinstance(value, int) else json.dumps(value)
            body.append(f"{key} = {text}\n")
    write_atomic(path, "".join(body).encode("utf-8"))


def register(
    store: Path,
    source: Path,
    *,
    name: str,
    analyzer: str,
    version: str = "1",
    licence: str = "",
    origin: str = "",
    architecture: Path | None = None,
    vocab: Path | None = None,
    companion: Path | None = None,
    card: Path | None = None,
) -> ModelEntry:
    """Copy a weights file a site obtained into the store, with its ``architecture`` JSON,
    tokenizer ``vocab``, ``companion`` checkpoint and model ``card`` when given, and add it
    to the manifest with its size and sha256 (and the companion's): for checkpoints whose
    provider publishes no hash we can ship."""
    for path in (source, architecture, vocab, companion, card):
        if path is not None and not path.is_file():
            raise WeightsError("no-file", f"{path} does not exist")
    side = [_copy_into(store, p, p.name).name if p else "" for p in (architecture, vocab)]
    second = _copy_into(store, companion, companion.name) if companion else None
    card_name = _copy_into(store, card, card.name).name if card else ""
    target = _copy_into(store, source, source.name)
    entry = ModelEntry(
        name,
        version,
        target.name,
        cached_sha256(target),
        target.stat().st_size,
        licence or "as obtained by this site; see the provider's terms",
        origin or "registered locally (ctnode weights register)",
        analyzer,
        architecture=side[0],
        vocab=side[1],
        companion=second.name if second else "",
        companion_sha256=cached_sha256(second) if second else "",
        companion_size=second.stat().st_size if second else 0,
        card=card_name,
    )
    update_manifest(store / "manifest.toml", (entry,))
    return entry
