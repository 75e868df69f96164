"""Reading MedNeXt weights: three accepted layouts, strict keys, clear refusals.

Accepted (MedNeXt.md, "Checkpoints"): the nnU-Net v1 trainer's checkpoint dict (``epoch``,
``state_dict``, ``optimizer_state_dict``, ...; what ``ctnode mednext train`` writes too),
a plain state dict, and either with DDP's ``module.`` prefix on every key. Anything else is
refused naming what the file holds: nnU-Net v2's ``network_weights`` dict, a pickled module,
a dict of something other than tensors.

Our classifier's keys are the encoder's (upstream's names) and ``head.*``;
:func:`encoder_state` takes a segmentation checkpoint's encoder for a classifier to start
training from, dropping the decoder by name and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inference.mednext.model import DECODER_PREFIXES, ENCODER_PREFIXES
from inference.strict import CheckpointError, check_layout

TRAINER_KEYS = ("epoch", "state_dict")
DDP_PREFIX = "module."


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = sorted(str(k) for k in obj)
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        return f"a dict with keys {shown or '(none)'}"
    return f"a {type(obj).__name__}"


def state_dict_of(obj: object, name: str = "checkpoint") -> tuple[dict[str, Tensor], str]:
    """The network weights inside ``obj`` and the layout found (``trainer``, ``state-dict``,
    with ``+ddp`` when the ``module.`` prefix was stripped)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError("not-a-checkpoint", f"{name} holds {_describe(obj)}")
    if "network_weights" in obj:
        raise CheckpointError(
            "nnunet-v2",
            f"{name} holds {_describe(obj)}: nnU-Net v2's format; MedNeXt's trainer (nnU-Net "
            "v1) stores the weights under 'state_dict'",
        )
    if all(k in obj for k in TRAINER_KEYS) and isinstance(obj["state_dict"], Mapping):
        layout, state = "trainer", obj["state_dict"]
    else:
        layout, state = "state-dict", obj
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad or not state:
        raise CheckpointError(
            "not-a-state-dict",
            f"{name} holds {_describe(obj)}; expected a trainer checkpoint (epoch, "
            "state_dict, ...) or a state dict of tensors"
            + (f" (not tensors: {', '.join(bad[:3])})" if bad else ""),
        )
    weights: dict[str, Tensor] = dict(state)
    if all(k.startswith(DDP_PREFIX) for k in weights):
        weights = {k[len(DDP_PREFIX) :]: v for k, v in weights.items()}
        layout += "+ddp"
    return weights, layout


def read(path: Path) -> tuple[dict[str, Tensor], str]:
    """The weights in ``path`` (loaded with ``weights_only``: a file that needs arbitrary
    unpickling, e.g. a whole pickled module, is refused) and the layout found."""
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            "unreadable",
            f"{path.name} is not a tensor file torch loads safely (a pickled module or "
            f"another format?): {type(exc).__name__}: {str(exc)[:160]}",
        ) from exc
    return state_dict_of(obj, path.name)


def load_strict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``state`` into ``model``, every key and shape matching, naming what differs."""
    own = model.state_dict()
    check_layout(own, state, "", "another variant, kernel size or label count?")
    model.load_state_dict(state, strict=True)


def encoder_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The encoder of a segmentation (or classifier) state dict: its ``stem``,
    ``enc_block_*``, ``down_*`` and ``bottleneck`` keys; the decoder's are dropped by name,
    any other key is an error."""
    other = [k for k in state if not k.startswith(ENCODER_PREFIXES + DECODER_PREFIXES)]
    other = [k for k in other if not k.startswith("head.")]
    if other:
        raise CheckpointError(
            "not-mednext", f"{len(other)} keys of no MedNeXt module, e.g. {sorted(other)[:3]}"
        )
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}


def load_encoder(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Initialise a classifier's encoder from a segmentation checkpoint (every encoder key
    must be there with its shape); the head keeps its own initialisation."""
    encoder = encoder_state(state)
    own = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    missing = sorted(set(own) - set(encoder))
    if missing:
        raise CheckpointError(
            "key-mismatch", f"the encoder lacks {len(missing)} keys, e.g. {missing[:3]}"
        )
    wrong = [k for k in own if tuple(encoder[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            "shape-mismatch",
            f"{len(wrong)} encoder keys with wrong shape, e.g. {k} {tuple(encoder[k].shape)} "
            f"!= {tuple(own[k].shape)}",
        )
    model.load_state_dict(encoder, strict=False)
