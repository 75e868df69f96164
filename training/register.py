"""Put a trained fusion model into the weights store: its files, written atomically, and
its entries in ``manifest.toml`` with sizes and sha256, so ``ctnode weights list`` and the
node verify it like any other weights.

Two entries, both ``analyzer = "fusion"``: ``<name>`` for the LightGBM text model and
``<name>.calibrator`` for the calibrator bundle (schema, calibrator, threshold, the model's
sha256). The model card and figures sit beside them, unregistered (documentation, not
weights). A training under an existing name replaces that model's entries.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from inference.fusion.trained import (
    ANALYZER,
    Bundle,
    calibrator_entry,
    calibrator_file,
    model_file,
)
from inference.weights_store import ModelEntry, read_manifest, update_manifest, write_atomic

LICENCE = "site-owned: trained on this site's studies by ctnode fusion train"
SOURCE = "local (ctnode fusion train); not downloadable"


def next_version(store: Path, name: str) -> str:
    """One more than the registered version of ``name`` when that is a number, else 1."""
    manifest = store / "manifest.toml"
    if not manifest.is_file():
        return "1"
    for entry in read_manifest(manifest):
        if entry.name == name:
            return str(int(entry.version) + 1) if entry.version.isdigit() else "1"
    return "1"


def register(store: Path, model_text: str, bundle: Bundle) -> tuple[ModelEntry, ModelEntry]:
    """Write the model and its calibrator bundle into ``store`` and the manifest."""
    store.mkdir(parents=True, exist_ok=True)
    model_bytes = model_text.encode("utf-8")
    if hashlib.sha256(model_bytes).hexdigest() != bundle.model_sha256:
        raise ValueError("the bundle does not name this model's sha256")
    bundle_bytes = (json.dumps(bundle.to_json(), indent=2) + "\n").encode("utf-8")
    model_sha = write_atomic(store / model_file(bundle.name), model_bytes)
    bundle_sha = write_atomic(store / calibrator_file(bundle.name), bundle_bytes)
    entries = (
        ModelEntry(
            bundle.name,
            bundle.version,
            model_file(bundle.name),
            model_sha,
            len(model_bytes),
            LICENCE,
            SOURCE,
            ANALYZER,
        ),
        ModelEntry(
            calibrator_entry(bundle.name),
            bundle.version,
            calibrator_file(bundle.name),
            bundle_sha,
            len(bundle_bytes),
            LICENCE,
            SOURCE,
            ANALYZER,
        ),
    )
    update_manifest(store / "manifest.toml", entries)
    return entries
