"""Strict loading of the released CT-CLIP v2 checkpoints (CT-CLIP_v2, VocabFine_v2, LiPro_v2).

Every key and shape must match our modules; the only documented exception (CT-CLIP.md,
"Checkpoints") is ``text_transformer.embeddings.position_ids``, a buffer older transformers
versions saved: it is checked to be 0..n-1 and dropped, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from inference.ctclip.model import CTCLIP, ClassFine, CTCLIPConfig
from inference.strict import CheckpointError, check_layout

Kind = Literal["base", "classfine"]
POSITION_IDS = "text_transformer.embeddings.position_ids"
CLASSFINE_PREFIX = "trained_model."


def detect_kind(state: Mapping[str, Tensor]) -> Kind:
    """``classfine`` when keys carry the ``trained_model.`` prefix and a classifier, else base."""
    if "classifier.weight" in state and any(k.startswith(CLASSFINE_PREFIX) for k in state):
        return "classfine"
    return "base"


def _drop_position_ids(state: dict[str, Tensor], prefix: str) -> None:
    key = prefix + POSITION_IDS
    ids = state.pop(key, None)
    if ids is None:
        return
    expected = torch.arange(ids.shape[-1]).reshape(1, -1)
    if ids.shape != expected.shape or not torch.equal(ids.to(torch.int64), expected):
        raise CheckpointError("bad-position-ids", f"{key} is not 0..{ids.shape[-1] - 1}")


def load_state(model: CTCLIP | ClassFine, state: Mapping[str, Tensor]) -> CTCLIP | ClassFine:
    """Load ``state`` strictly into ``model``, naming missing, unexpected and mis-shaped keys."""
    work = dict(state)
    prefix = CLASSFINE_PREFIX if isinstance(model, ClassFine) else ""
    _drop_position_ids(work, prefix)
    own = model.state_dict()
    check_layout(own, work)
    model.load_state_dict(work, strict=True, assign=True)
    base = model.trained_model if isinstance(model, ClassFine) else model
    emb = base.text_transformer.embeddings
    emb.position_ids = torch.arange(emb.position_embeddings.num_embeddings).reshape(1, -1)
    return model


def load_checkpoint(
    path: Path,
    cfg: CTCLIPConfig | None = None,
    kind: Kind | None = None,
    expect: Kind | None = None,
) -> CTCLIP | ClassFine:
    """Read a raw state dict file (memory-mapped) and build the matching model in eval mode.

    ``kind`` forces the layout; ``expect`` refuses a file of the other kind by name (a
    ClassFine file where a zero-shot model is wanted, or the reverse)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(
            "unreadable", f"{path.name} is not a torch state dict: {exc}"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError("not-a-state-dict", f"{path.name} holds {type(state).__name__}")
    found = detect_kind(state)
    if expect is not None and found != expect:
        names = {"base": "base or VocabFine", "classfine": "ClassFine (CT_LiPro_v2)"}
        raise CheckpointError(
            "wrong-kind", f"{path.name} is a {names[found]} checkpoint, not {names[expect]}"
        )
    kind = kind or found
    cfg = cfg or CTCLIPConfig()
    with torch.device("meta"):
        model: CTCLIP | ClassFine = ClassFine(cfg) if kind == "classfine" else CTCLIP(cfg)
    load_state(model, state)
    return model.eval()
