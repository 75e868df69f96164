"""MedNeXt v1 held to the original: every tensor of the tiny reference (with and without deep
supervision), upstream's key names and parameter counts for every variant, the checkpoint
layouts a site may hold, and the classifier head on the encoder."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import torch
from torch import nn

from inference.mednext.card import VARIANTS
from inference.mednext.checkpoint import encoder_state, load_encoder, load_strict, read
from inference.mednext.model import MedNeXt, MedNeXtClassifier, MedNeXtConfig
from inference.strict import CheckpointError
from tests.conftest import MODELS

TINY = MODELS / "mednext-tiny-reference"
TSV = MODELS / "mednext-B-k3-state-dict.tsv"
TOL = 1e-5

# MedNeXt.md, "Variants": parameters with 1 input channel and 2 classes, and state-dict keys.
PARAMETERS = {
    ("S", 3): 5_550_915,
    ("S", 5): 5_980_547,
    ("B", 3): 10_526_307,
    ("B", 5): 10_955_939,
    ("M", 3): 17_548_963,
    ("M", 5): 18_260_835,
    ("L", 3): 61_779_267,
    ("L", 5): 62_992_899,
}
KEYS = {"S": 229, "B": 229, "M": 357, "L": 517}
ENCODER_PARAMETERS = {"S": 3.57e6, "B": 6.87e6, "M": 12.49e6, "L": 46.75e6}


def _reference(name: str) -> Path:
    path = TINY / name
    if not path.is_file():
        pytest.skip(f"tiny reference {path} is absent (see ../shared/models)")
    return path


def _tiny(deep_supervision: bool) -> tuple[MedNeXt, dict[str, torch.Tensor]]:
    cfg = MedNeXtConfig.from_json(json.loads(_reference("tiny_config.json").read_text()))
    cfg = dataclasses.replace(cfg, deep_supervision=deep_supervision)
    model = MedNeXt(cfg).eval()
    weights = "tiny_state_dict_ds.pt" if deep_supervision else "tiny_state_dict.pt"
    state, layout = read(_reference(weights))
    assert layout == "state-dict"
    load_strict(model, state)
    return model, torch.load(_reference("tiny_reference.pt"), weights_only=True)


def _outputs(model: MedNeXt, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor the reference holds, from our model: forward-hook outputs of the
    top-level modules by upstream's names, and the network's output(s)."""
    got: dict[str, torch.Tensor] = {}
    for name, module in model.named_children():
        module.register_forward_hook(
            lambda _m, _i, out, name=name: got.__setitem__(f"after_{name}", out)
        )
    with torch.no_grad():
        out = model(x)
    if isinstance(out, list):
        got.update({f"ds_output_{i}": t for i, t in enumerate(out)})
    else:
        got["output"] = out
    return got


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_tiny_reference_every_tensor(deep_supervision: bool) -> None:
    model, ref = _tiny(deep_supervision)
    got = _outputs(model, ref["input"])
    if deep_supervision:
        got["output"] = got["ds_output_0"]  # the reference's full-resolution logits
    compared = []
    for name, expected in ref.items():
        if name == "input":
            continue
        if name.startswith("ds_output_") and not deep_supervision:
            continue  # the deep-supervision outputs are compared with the DS model
        assert name in got, f"our model produces no {name}"
        assert got[name].shape == expected.shape, name
        diff = (got[name] - expected).abs().max().item()
        assert diff < TOL, f"{name}: max abs diff {diff}"
        compared.append(name)
    wanted = {n for n in ref if n != "input"}
    if not deep_supervision:
        wanted = {n for n in wanted if not n.startswith("ds_output_")}
    assert set(compared) == wanted and len(compared) == (24 if deep_supervision else 19)


def test_the_deep_supervision_weights_add_only_the_side_outputs() -> None:
    plain, _ = read(_reference("tiny_state_dict.pt"))
    deep, _ = read(_reference("tiny_state_dict_ds.pt"))
    extra = set(deep) - set(plain)
    assert {re.sub(r"\.(weight|bias)$", "", k) for k in extra} == {
        f"out_{i}.conv_out" for i in range(1, 5)
    }
    assert all(torch.equal(plain[k], deep[k]) for k in plain)


def _tsv() -> dict[str, tuple[int, ...]]:
    if not TSV.is_file():
        pytest.skip(f"{TSV} is absent (see ../shared/models)")
    shapes = {}
    for line in TSV.read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return shapes


def test_a_state_dict_of_the_published_b_k3_layout_loads_strictly() -> None:
    shapes = _tsv()
    assert len(shapes) == 229
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    model = MedNeXt(MedNeXtConfig.variant("B", 3))
    load_strict(model, state)  # every key and shape, nothing left over
    assert torch.equal(model.state_dict()["up_3.res_conv.weight"], state["up_3.res_conv.weight"])
    # the classifier's encoder is that encoder, key for key
    classifier = MedNeXtClassifier(MedNeXtConfig.variant("B", 3), 22)
    load_encoder(classifier, state)
    encoder = {k for k in classifier.state_dict() if not k.startswith("head.")}
    assert encoder == set(encoder_state(state))
    assert torch.equal(
        classifier.state_dict()["bottleneck.1.conv3.weight"], state["bottleneck.1.conv3.weight"]
    )


@pytest.mark.parametrize(("variant", "kernel"), sorted(PARAMETERS))
def test_every_variant_has_upstreams_size(variant: str, kernel: int) -> None:
    with torch.device("meta"):
        model = MedNeXt(MedNeXtConfig.variant(variant, kernel))
        deep = MedNeXt(MedNeXtConfig.variant(variant, kernel, deep_supervision=True))
        classifier = MedNeXtClassifier(MedNeXtConfig.variant(variant, kernel), 22)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[(variant, kernel)]
    assert len(model.state_dict()) == KEYS[variant]
    assert len(deep.state_dict()) == KEYS[variant] + 8
    assert model.cfg.checkpointing is VARIANTS[variant].checkpointing
    if kernel == 3:
        encoder = sum(p.numel() for n, p in classifier.named_parameters() if "head" not in n)
        assert encoder == pytest.approx(ENCODER_PARAMETERS[variant], rel=5e-3)
    assert classifier.head.in_features == 512


def test_gradient_checkpointing_changes_no_number() -> None:
    torch.manual_seed(0)
    cfg = MedNeXtConfig(n_channels=4, exp_r=(2,) * 9, block_counts=(1,) * 9)
    plain = MedNeXtClassifier(cfg, 3)
    checkpointed = MedNeXtClassifier(dataclasses.replace(cfg, checkpointing=True), 3)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 16, 16, 16)
    grads = []
    for model in (plain, checkpointed):
        model.zero_grad()
        model(x).sum().backward()
        stem = model.get_submodule("stem")
        assert isinstance(stem, nn.Conv3d) and stem.weight.grad is not None
        grads.append(stem.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_the_head_pools_the_bottleneck() -> None:
    torch.manual_seed(0)
    cfg = MedNeXtConfig(n_channels=4, exp_r=(2,) * 9, block_counts=(1,) * 9)
    model = MedNeXtClassifier(cfg, 5).eval()
    x = torch.randn(2, 1, 32, 16, 48)
    bottleneck: list[torch.Tensor] = []
    model.get_submodule("bottleneck").register_forward_hook(
        lambda _m, _i, out: bottleneck.append(out)
    )
    with torch.no_grad():
        logits = model(x)
    (bottom,) = bottleneck
    assert bottom.shape == (2, 64, 2, 1, 3)  # 16 C channels at 1/16 of each axis
    assert torch.allclose(logits, model.head(bottom.mean(dim=(2, 3, 4))), atol=1e-6)
    assert logits.shape == (2, 5)


def _classifier_state() -> tuple[MedNeXtClassifier, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    cfg = MedNeXtConfig(n_channels=4, exp_r=(2,) * 9, block_counts=(1,) * 9)
    model = MedNeXtClassifier(cfg, 4).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _fresh() -> MedNeXtClassifier:
    torch.manual_seed(99)
    cfg = MedNeXtConfig(n_channels=4, exp_r=(2,) * 9, block_counts=(1,) * 9)
    return MedNeXtClassifier(cfg, 4).eval()


@pytest.mark.parametrize(
    ("layout", "wrap"),
    [
        ("state-dict", lambda s: s),
        ("state-dict+ddp", lambda s: {f"module.{k}": v for k, v in s.items()}),
        (
            "trainer",
            lambda s: {
                "epoch": 7,
                "state_dict": s,
                "optimizer_state_dict": {"state": {}, "param_groups": []},
                "lr_scheduler_state_dict": {"last_epoch": 7},
                "plot_stuff": ([0.5], [0.4], [0.3], [0.2]),
                "best_stuff": (7, 0.3, 0.2, 0.9),
                "amp_grad_scaler": {"scale": 65536.0},
            },
        ),
        (
            "trainer+ddp",
            lambda s: {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in s.items()}},
        ),
    ],
)
def test_the_three_checkpoint_layouts_load(layout: str, wrap: object, tmp_path: Path) -> None:
    model, state = _classifier_state()
    path = tmp_path / "weights.model"
    torch.save(wrap(state), path)  # type: ignore[operator]
    loaded, found = read(path)
    assert found == layout
    fresh = _fresh()
    load_strict(fresh, loaded)
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"network_weights": {}, "optimizer_state": {}}, ["nnunet-v2", "network_weights"]),
        ([torch.zeros(1)], ["not-a-checkpoint", "list"]),
        ({"weights": [1, 2]}, ["not-a-state-dict", "weights"]),
        ({"epoch": 3, "state_dict": {"stem.weight": "x"}}, ["not-a-state-dict", "stem.weight"]),
        ({}, ["not-a-state-dict", "(none)"]),
    ],
)
def test_anything_else_is_refused_naming_what_it_holds(
    content: object, words: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as caught:
        read(path)
    for word in words:
        assert word in str(caught.value)


def test_a_pickled_module_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match=r"unreadable: module\.pt is not a tensor file"):
        read(path)


def test_weights_of_another_size_are_refused_by_key_and_shape() -> None:
    model, state = _classifier_state()
    with pytest.raises(CheckpointError, match="shape-mismatch: 2 keys with wrong shape"):
        load_strict(MedNeXtClassifier(model.cfg, 5), state)
    state["decoder.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"key-mismatch: 0 missing .* 1 unexpected"):
        load_strict(model, state)
    with pytest.raises(CheckpointError, match="not-mednext"):
        encoder_state(state)


def test_a_segmentation_checkpoints_encoder_starts_the_classifier() -> None:
    model, ref = _tiny(deep_supervision=True)
    cfg = dataclasses.replace(model.cfg, deep_supervision=False)
    classifier = MedNeXtClassifier(cfg, 22).eval()
    head = classifier.head.weight.clone()
    load_encoder(classifier, model.state_dict())
    assert torch.equal(classifier.head.weight, head)
    bottom: list[torch.Tensor] = []
    classifier.get_submodule("bottleneck").register_forward_hook(
        lambda _m, _i, out: bottom.append(out)
    )
    with torch.no_grad():
        classifier(ref["input"])
    assert (bottom[0] - ref["after_bottleneck"]).abs().max().item() < TOL
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("down_3.")}
    with pytest.raises(CheckpointError, match="the encoder lacks 10 keys"):
        load_encoder(classifier, partial)
