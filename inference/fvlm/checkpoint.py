"""Strict loading of the published fVLM checkpoint (a LAVIS training checkpoint).

The file is a dict whose ``model`` entry is the state dict (a raw state dict is accepted too).
Every key and shape must match our modules, with four documented exceptions (fVLM.md,
"Checkpoint"), each checked, never silently ignored:

- ``text_encoder.embeddings.position_ids``: a buffer older transformers versions saved; checked
  to be 0..n-1 and dropped (ours is rebuilt).
- ``text_encoder.cls.predictions.decoder.{weight,bias}``: the BERT masked-language-model head's
  output layer, trained with the model but never used to score; shape-checked and dropped.
- :data:`LACKED_KEYS`, the rest of that head, are **absent** from the published file: the LAVIS
  saver omits parameters that do not require gradients, and the head's transform and bias were
  frozen. Our model has no MLM head, so their absence is expected; a file that does carry them
  has them shape-checked and dropped like the decoder.

- ``text_encoder.embeddings.token_type_embeddings.weight``, when present (it depends on a BERT
  config file that is not in the repository, fVLM.md): the original's text embeddings build it
  but never add it (word plus position embeddings only; the tiny reference holds us to that),
  so it is shape-checked and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from inference.fvlm.model import FVLM, FVLMConfig
from inference.strict import CheckpointError, check_layout

POSITION_IDS = "text_encoder.embeddings.position_ids"
TOKEN_TYPES = "text_encoder.embeddings.token_type_embeddings.weight"
MLM_DECODER = (
    "text_encoder.cls.predictions.decoder.weight",
    "text_encoder.cls.predictions.decoder.bias",
)
LACKED_KEYS = (
    "text_encoder.cls.predictions.bias",
    "text_encoder.cls.predictions.transform.dense.weight",
    "text_encoder.cls.predictions.transform.dense.bias",
    "text_encoder.cls.predictions.transform.LayerNorm.weight",
    "text_encoder.cls.predictions.transform.LayerNorm.bias",
)


def _mlm_shapes(cfg: FVLMConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the MLM head's keys, by which the dropped ones are checked."""
    hidden, vocab = cfg.bert.hidden_size, cfg.bert.vocab_size
    return {
        MLM_DECODER[0]: (vocab, hidden),
        MLM_DECODER[1]: (vocab,),
        LACKED_KEYS[0]: (vocab,),
        LACKED_KEYS[1]: (hidden, hidden),
        LACKED_KEYS[2]: (hidden,),
        LACKED_KEYS[3]: (hidden,),
        LACKED_KEYS[4]: (hidden,),
    }


def state_dict_of(raw: object, name: str) -> dict[str, Tensor]:
    """The state dict of a LAVIS checkpoint (``raw["model"]``) or of a raw state dict."""
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        raw = raw["model"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError("not-a-state-dict", f"{name} holds no fVLM state dict")
    return dict(raw)


def _drop_documented(state: dict[str, Tensor], cfg: FVLMConfig) -> None:
    ids = state.pop(POSITION_IDS, None)
    if ids is not None:
        expected = torch.arange(ids.shape[-1]).reshape(1, -1)
        if ids.shape != expected.shape or not torch.equal(ids.to(torch.int64), expected):
            raise CheckpointError(
                "bad-position-ids", f"{POSITION_IDS} is not 0..{ids.shape[-1] - 1}"
            )
    types = state.pop(TOKEN_TYPES, None)
    if types is not None and (types.ndim != 2 or types.shape[1] != cfg.bert.hidden_size):
        raise CheckpointError("shape-mismatch", f"{TOKEN_TYPES} {tuple(types.shape)}")
    for key, shape in _mlm_shapes(cfg).items():
        value = state.pop(key, None)
        if value is not None and tuple(value.shape) != shape:
            raise CheckpointError(
                "shape-mismatch", f"{key} {tuple(value.shape)} != {shape} (the unused MLM head)"
            )


def load_state(model: FVLM, state: Mapping[str, Tensor]) -> FVLM:
    """Load ``state`` strictly into ``model``, naming missing, unexpected and mis-shaped keys."""
    work = dict(state)
    _drop_documented(work, model.cfg)
    own = model.state_dict()
    check_layout(own, work)
    model.load_state_dict(work, strict=True, assign=True)
    emb = model.text_encoder.embeddings
    emb.position_ids = torch.arange(emb.position_embeddings.num_embeddings).reshape(1, -1)
    return model


def load_checkpoint(path: Path, cfg: FVLMConfig | None = None) -> FVLM:
    """Read the checkpoint (memory-mapped) and build the matching model in eval mode."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(
            "unreadable", f"{path.name} is not a torch checkpoint: {exc}"
        ) from exc
    state = state_dict_of(raw, path.name)
    cfg = cfg or FVLMConfig()
    with torch.device("meta"):
        model = FVLM(cfg)
    load_state(model, state)
    return model.eval()
