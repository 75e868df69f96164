"""A weights store holding a generated MedNeXt classifier of a tiny custom size with its
model card, registered as a site registers one (``ctnode weights register --card``). Its card
names the seeds' labels but one, and one label of its own, so the node's handling of a
site's label set is exercised end to end."""

from __future__ import annotations

from pathlib import Path

import torch

from inference import weights_store as weights
from inference.mednext.card import DEFAULT_LABELS, ModelCard, Preprocessing
from inference.mednext.model import classifier_for
from tests.mednext_synthetic import TINY

SITE_LABEL = "Tracheal stenosis"
LABELS = (*DEFAULT_LABELS[:-1], SITE_LABEL)


def phantom_card(name: str = "tiny-mednext", labels: tuple[str, ...] = LABELS) -> ModelCard:
    """A tiny custom variant whose input covers ``tests.phantoms.chest_phantom``'s lungs."""
    return ModelCard(
        name=name,
        version="1",
        labels=labels,
        thresholds=tuple(0.3 + 0.02 * i for i in range(len(labels))),
        variant="custom",
        kernel_size=3,
        preprocessing=Preprocessing(spacing_mm=(8.0, 8.0, 8.0), input_size=(32, 32, 48)),
        architecture=TINY,
    )


def tiny_state(card: ModelCard, seed: int = 5) -> dict[str, torch.Tensor]:
    """Seeded weights with a head spread wide enough that labels differ."""
    torch.manual_seed(seed)
    model = classifier_for(card)
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def make_store(store: Path, *, card: ModelCard | None = None, with_card: bool = True) -> Path:
    """Write and register ``tiny-mednext.pt`` (a trainer-layout checkpoint, as upstream's
    trainer writes) and its card in ``store``."""
    card = card or phantom_card()
    store.mkdir(parents=True, exist_ok=True)
    checkpoint = {"epoch": 3, "state_dict": tiny_state(card), "optimizer_state_dict": {}}
    torch.save(checkpoint, store / "tiny-mednext.pt")
    card_file = card.write(store / "tiny-mednext.card.json")
    weights.register(
        store,
        store / "tiny-mednext.pt",
        name=card.name,
        analyzer="mednext",
        card=card_file if with_card else None,
    )
    return store
