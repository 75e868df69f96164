"""The MedNeXt model card, the codes of its labels, its findings and features, and the
preprocessing it prescribes (the one implementation training and the analyzer share)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from inference import codes
from inference.feature_schema import FeatureSchema
from inference.mednext.card import (
    DEFAULT_LABELS,
    VARIANTS,
    Architecture,
    CardError,
    ModelCard,
    Preprocessing,
)
from inference.mednext.results import FEATURE_SET, SPECS, feature_name, to_result
from inference.neural import BY_NAME


def _card(**changes: object) -> ModelCard:
    fields: dict[str, object] = {
        "name": "seed-mednext",
        "version": "3",
        "labels": DEFAULT_LABELS,
        "thresholds": tuple(0.1 + i / 50 for i in range(22)),
    }
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_the_seeds_card_has_22_labels_and_round_trips(tmp_path: Path) -> None:
    card = _card(variant="L", kernel_size=5)
    assert len(card.labels) == 22 and card.labels[:18] == codes.CT_RATE_LABELS
    assert card.arch == VARIANTS["L"] and card.arch.checkpointing
    again = ModelCard.read(card.write(tmp_path / "card.json"))
    assert again == card
    data = json.loads((tmp_path / "card.json").read_text())
    assert data["labels"][9] == {"name": "Lung nodule", "threshold": card.threshold("Lung nodule")}
    assert data["preprocessing"] == {
        "spacing_mm": [2.0, 2.0, 2.0],
        "input_size": [160, 192, 192],
        "hu_window": [-1000.0, 1000.0],
        "lung_margin_mm": 10.0,
    }
    custom = _card(variant="custom", architecture=Architecture(8, (2,) * 9, (1,) * 9))
    assert ModelCard.from_json(custom.to_json()).arch.n_channels == 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"thresholds": (0.5,)}, "22 labels but 1 thresholds"),
        ({"labels": ("A", "A"), "thresholds": (0.5, 0.5)}, "unique"),
        ({"thresholds": (1.5,) * 22}, r"probabilities in \[0, 1\]"),
        ({"variant": "XL"}, "S, B, M, L or custom"),
        ({"variant": "custom"}, "needs an architecture"),
        ({"kernel_size": 7}, "3 or 5"),
        ({"labels": ("x" * 65,), "thresholds": (0.5,)}, "1 to 64 characters"),
    ],
)
def test_a_card_that_cannot_describe_a_model_is_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(CardError, match=message):
        _card(**changes)


@pytest.mark.parametrize(
    ("pre", "message"),
    [
        ({"input_size": (160, 190, 192)}, "multiples of 16"),
        ({"input_size": (16, 16, 16)}, "one voxel at the bottleneck"),
        ({"hu_window": (400.0, -1000.0)}, "low < high"),
        ({"spacing_mm": (0.0, 1.0, 1.0)}, "3 positive numbers"),
    ],
)
def test_preprocessing_the_encoder_cannot_take_is_refused(
    pre: dict[str, object], message: str
) -> None:
    with pytest.raises(CardError, match=message):
        Preprocessing(**pre)  # type: ignore[arg-type]


def test_a_card_file_is_checked_on_reading(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text(json.dumps({"format": "ctnode-fusion-card"}))
    with pytest.raises(CardError, match="not a MedNeXt model card"):
        ModelCard.read(path)
    data = _card().to_json()
    del data["labels"][0]["threshold"]
    path.write_text(json.dumps(data))
    with pytest.raises(CardError, match="malformed model card: KeyError"):
        ModelCard.read(path)


def test_label_codes_reuse_the_table_and_derive_the_rest_deterministically() -> None:
    assert codes.finding_code("Pleural effusion") == codes.label_code("Pleural effusion")
    assert codes.finding_code("Pneumothorax") == codes.Code("36118008", "SCT", "Pneumothorax")
    table = {r.code for r in codes.table()}
    assert all(codes.finding_code(label) in table for label in DEFAULT_LABELS)
    own = codes.finding_code("Tracheal stenosis")
    assert own.scheme == codes.PRIVATE_SCHEME and own.meaning == "Tracheal stenosis"
    assert (
        own.value == "CTNL-" + __import__("hashlib").sha256(b"tracheal stenosis").hexdigest()[:10]
    )
    assert codes.finding_code("  tracheal   STENOSIS ").value == own.value  # same label
    assert codes.finding_code("Tracheal stenoses").value != own.value
    assert len(own.value) <= 16 and not own.value.startswith("CTN-")
    with pytest.raises(ValueError, match="must not be empty"):
        codes.finding_code("   ")


def test_findings_follow_the_card_and_features_the_seeds_labels() -> None:
    (spec,) = SPECS
    assert BY_NAME["mednext"] is spec and spec.needs_masks
    assert spec.loader == "inference.mednext.analyzer:load"
    assert FEATURE_SET.names[9] == "mednext.lung_nodule" and len(FEATURE_SET.names) == 22
    card = _card(
        labels=("Pneumothorax", "Bronchial wall thickening", "Emphysema"),
        thresholds=(0.2, 0.5, 0.9),
    )
    result = to_result([0.3, 0.6, 0.8], card, "site-1/code-1", ("a" * 64,))
    assert [(f.label, f.present) for f in result.findings] == [
        ("Pneumothorax", True),
        ("Bronchial wall thickening", True),
        ("Emphysema", False),  # 0.8 is under its threshold of 0.9
    ]
    assert result.findings[1].code.value.startswith("CTNL-")
    assert result.findings[2].threshold is not None and result.findings[2].threshold.value == 0.9
    assert result.features == {"mednext.pneumothorax": 0.3, "mednext.emphysema": 0.8}
    values = FeatureSchema((FEATURE_SET,)).values([result])
    assert values[feature_name("Emphysema")] == 0.8
    assert sum(not math.isnan(v) for v in values.values()) == 2  # the other 20 are NaN
    with pytest.raises(ValueError, match="expected 3 probabilities"):
        to_result([0.1], card, "v")


torch = pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

from inference.mednext.preprocess import NoLungs, lung_box, preprocess  # noqa: E402


def test_preprocessing_cuts_around_the_lungs_windows_and_centres() -> None:
    voxels = np.full((40, 60, 80), -500, dtype=np.int16)  # not air: padding is told apart
    lungs = np.zeros(voxels.shape, dtype=bool)
    lungs[10:30, 20:40, 10:70] = True
    voxels[lungs] = -850
    voxels[20, 30, 40] = 3000  # clipped to the window
    box = lung_box(lungs, (2.5, 1.0, 1.0), margin_mm=5.0)
    assert box == (slice(8, 32), slice(15, 45), slice(5, 75))
    pre = Preprocessing(spacing_mm=(2.5, 2.0, 2.0), input_size=(32, 32, 48), lung_margin_mm=5.0)
    x = preprocess(voxels, (2.5, 1.0, 1.0), lungs, pre)
    assert x.shape == (1, 32, 32, 48) and x.dtype == torch.float32
    assert float(x.max()) <= 1.0 and float(x.min()) == -1.0
    # the cut (24 x 15 x 35 voxels once resampled) centred; the padding around it is -1
    inside = x[0, 4:28, 8:23, 6:41]
    assert float(inside.min()) > -0.86
    assert float(x[0, :4].max()) == -1.0 and float(x[0, 28:].max()) == -1.0
    assert float(x[0, :, :8].max()) == -1.0 and float(x[0, :, :, :6].max()) == -1.0
    assert float(x[0, :, :, 41:].max()) == -1.0
    lung = (-850 + 1000) / 2000 * 2 - 1  # -850 HU in the window [-1000, 1000] -> [-1, 1]
    assert float(x[0, 10, 12, 12]) == pytest.approx(lung, abs=1e-5)
    assert float(x[0, 5, 12, 20]) == pytest.approx(-0.5, abs=1e-5)  # the margin: -500 HU
    with pytest.raises(NoLungs, match="the lung mask is empty"):
        preprocess(voxels, (2.5, 1.0, 1.0), np.zeros_like(lungs), pre)
