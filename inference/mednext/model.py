"""MedNeXt v1 (Roy et al., MICCAI 2023) with upstream's module names, and our classifier.

Written from the facts in ``shared/models/MedNeXt.md``: a 3D ConvNeXt U-Net whose blocks are
a depthwise k³ convolution, a per-channel GroupNorm, a 1³ expansion, GELU and a 1³
compression. Module and attribute names (``stem``, ``enc_block_i.j``, ``down_i``,
``bottleneck.j``, ``up_i``, ``dec_block_i.j``, ``out_i.conv_out``, ``dummy_tensor``) exist
so that a segmentation checkpoint of any variant loads key for key.

:class:`MedNeXt` is the whole segmentation network (the reference the tests compare with);
:class:`MedNeXtClassifier` is the encoder alone (the same names, so a segmentation
checkpoint's encoder loads unchanged) and our multilabel head: the bottleneck (16 C channels
at 1/16 resolution) averaged over space, one linear layer, one logit per label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from inference.mednext.card import VARIANTS, Architecture, ModelCard

ENCODER_PREFIXES = ("stem.", "enc_block_", "down_", "bottleneck.")
DECODER_PREFIXES = ("up_", "dec_block_", "out_", "dummy_tensor")


@dataclass(frozen=True)
class MedNeXtConfig:
    """Every constructor argument of a MedNeXt v1 network (``tiny_config.json``'s form)."""

    in_channels: int = 1
    n_channels: int = 32
    n_classes: int = 2
    exp_r: tuple[int, ...] = (2,) * 9
    kernel_size: int = 3
    block_counts: tuple[int, ...] = (2,) * 9
    deep_supervision: bool = False
    checkpointing: bool = False

    def __post_init__(self) -> None:
        if len(self.exp_r) != 9 or len(self.block_counts) != 9:
            raise ValueError("exp_r and block_counts need 9 entries (enc 0-3, bottleneck, dec 3-0)")
        if self.kernel_size not in (3, 5):
            raise ValueError(f"kernel_size must be 3 or 5, not {self.kernel_size}")

    @classmethod
    def variant(
        cls,
        name: str,
        kernel_size: int = 3,
        *,
        in_channels: int = 1,
        n_classes: int = 2,
        deep_supervision: bool = False,
    ) -> MedNeXtConfig:
        """Upstream's ``create_mednext_v1`` variants S, B, M and L."""
        arch = VARIANTS[name]
        return cls.from_architecture(
            arch,
            kernel_size,
            in_channels=in_channels,
            n_classes=n_classes,
            deep_supervision=deep_supervision,
        )

    @classmethod
    def from_architecture(
        cls,
        arch: Architecture,
        kernel_size: int,
        *,
        in_channels: int = 1,
        n_classes: int = 2,
        deep_supervision: bool = False,
    ) -> MedNeXtConfig:
        return cls(
            in_channels=in_channels,
            n_channels=arch.n_channels,
            n_classes=n_classes,
            exp_r=arch.exp_r,
            kernel_size=kernel_size,
            block_counts=arch.block_counts,
            deep_supervision=deep_supervision,
            checkpointing=arch.checkpointing,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MedNeXtConfig:
        """Upstream's constructor arguments (an int ``exp_r`` or ``block_counts`` applies to
        every stage); only the options all published variants share are accepted."""
        fixed = {"do_res": True, "do_res_up_down": True, "norm_type": "group", "dim": "3d"}
        for key, value in fixed.items():
            if data.get(key, value) != value:
                raise ValueError(f"{key} = {data[key]!r} is not supported (only {value!r})")
        if data.get("grn", False):
            raise ValueError("grn = true is not supported (no published variant uses it)")
        kernel = int(data.get("kernel_size", 3))
        for key in ("enc_kernel_size", "dec_kernel_size"):
            if data.get(key) not in (None, kernel):
                raise ValueError(f"{key} different from kernel_size is not supported")

        def nine(value: int | list[int]) -> tuple[int, ...]:
            return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),) * 9

        return cls(
            in_channels=int(data.get("in_channels", 1)),
            n_channels=int(data["n_channels"]),
            n_classes=int(data.get("n_classes", 2)),
            exp_r=nine(data.get("exp_r", 4)),
            kernel_size=kernel,
            block_counts=nine(data.get("block_counts", 2)),
            deep_supervision=bool(data.get("deep_supervision", False)),
            checkpointing=data.get("checkpoint_style") is not None,
        )


class Block(nn.Module):
    """depthwise k³ conv -> GroupNorm(C groups) -> 1³ conv to exp_r·C -> GELU -> 1³ conv;
    plus the input when ``residual`` (plain blocks)."""

    def __init__(
        self, channels: int, out_channels: int, exp_r: int, kernel: int, residual: bool = True
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv3d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.GroupNorm(channels, channels)
        self.conv2 = nn.Conv3d(channels, exp_r * channels, 1)
        self.act = nn.GELU()
        self.conv3 = nn.Conv3d(exp_r * channels, out_channels, 1)

    def branch(self, x: Tensor) -> Tensor:
        return self.conv3(self.act(self.conv2(self.norm(self.conv1(x)))))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        return x + out if self.residual else out


class DownBlock(Block):
    """Halves each axis and doubles the channels: stride-2 depthwise conv, plus a stride-2
    1³ convolution of the input (never the identity)."""

    def __init__(self, channels: int, exp_r: int, kernel: int) -> None:
        super().__init__(channels, 2 * channels, exp_r, kernel, residual=False)
        self.conv1 = nn.Conv3d(
            channels, channels, kernel, stride=2, padding=kernel // 2, groups=channels
        )
        self.res_conv = nn.Conv3d(channels, 2 * channels, 1, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x) + self.res_conv(x)  # type: ignore[no-any-return]


class UpBlock(Block):
    """Doubles each axis and halves the channels: a stride-2 depthwise transposed conv gives
    2n-1 per axis, padded by one zero at the start of each axis (upstream's choice, kept:
    it decides which voxels line up with the skip), plus the same of a 1³ transposed conv."""

    def __init__(self, channels: int, exp_r: int, kernel: int) -> None:
        super().__init__(channels, channels // 2, exp_r, kernel, residual=False)
        self.conv1 = nn.ConvTranspose3d(  # type: ignore[assignment]
            channels, channels, kernel, stride=2, padding=kernel // 2, groups=channels
        )
        self.res_conv = nn.ConvTranspose3d(channels, channels // 2, 1, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(self.branch(x) + self.res_conv(x), (1, 0, 1, 0, 1, 0))


class OutBlock(nn.Module):
    """``out_i.conv_out``: a 1³ transposed convolution to the classes (upstream's layer)."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.conv_out = nn.ConvTranspose3d(channels, n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(x)  # type: ignore[no-any-return]


def _stage(channels: int, exp_r: int, kernel: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(Block(channels, channels, exp_r, kernel) for _ in range(count)))


def _add_encoder(module: nn.Module, cfg: MedNeXtConfig) -> None:
    """``stem``, ``enc_block_0..3``, ``down_0..3`` and ``bottleneck`` on ``module``."""
    c, k, exp, blocks = cfg.n_channels, cfg.kernel_size, cfg.exp_r, cfg.block_counts
    module.stem = nn.Conv3d(cfg.in_channels, c, 1)
    for i in range(4):
        width = c * 2**i
        setattr(module, f"enc_block_{i}", _stage(width, exp[i], k, blocks[i]))
        setattr(module, f"down_{i}", DownBlock(width, exp[i + 1], k))
    module.bottleneck = _stage(16 * c, exp[4], k, blocks[4])


def _run(stage: nn.Module, x: Tensor, checkpointed: bool) -> Tensor:
    """A stage, block by block under gradient checkpointing when training asks for it
    (M and L: no numeric effect, less activation memory)."""
    if not (checkpointed and torch.is_grad_enabled() and x.requires_grad):
        return stage(x)  # type: ignore[no-any-return]
    blocks = list(stage) if isinstance(stage, nn.Sequential) else [stage]
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False)
    return x


def _encode(module: nn.Module, x: Tensor, checkpointed: bool) -> tuple[list[Tensor], Tensor]:
    """The four skip tensors (enc_block_0..3 outputs) and the bottleneck output."""
    x = module.get_submodule("stem")(x)
    skips = []
    for i in range(4):
        x = _run(module.get_submodule(f"enc_block_{i}"), x, checkpointed)
        skips.append(x)
        x = _run(module.get_submodule(f"down_{i}"), x, checkpointed)
    return skips, _run(module.get_submodule("bottleneck"), x, checkpointed)


class MedNeXt(nn.Module):
    """The segmentation network: the encoder, ``up_3..0`` and ``dec_block_3..0`` (each
    decoder stage's input is its skip plus the up block's output), ``out_0`` and, with deep
    supervision, ``out_1..3`` on dec_block_1..3 and ``out_4`` on the bottleneck."""

    def __init__(self, cfg: MedNeXtConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, k, exp, blocks = cfg.n_channels, cfg.kernel_size, cfg.exp_r, cfg.block_counts
        _add_encoder(self, cfg)
        for i in (3, 2, 1, 0):
            width = c * 2**i
            setattr(self, f"up_{i}", UpBlock(2 * width, exp[8 - i], k))
            setattr(self, f"dec_block_{i}", _stage(width, exp[8 - i], k, blocks[8 - i]))
        self.out_0 = OutBlock(c, cfg.n_classes)
        if cfg.deep_supervision:
            for i in range(1, 5):
                setattr(self, f"out_{i}", OutBlock(c * 2**i, cfg.n_classes))
        # in upstream's state dict (its checkpointing trick); numerically unused
        self.dummy_tensor = nn.Parameter(torch.tensor([1.0]), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits at full resolution; with deep supervision the list [full, 1/2, 1/4, 1/8,
        1/16] in upstream's order."""
        ckpt = self.cfg.checkpointing
        skips, x = _encode(self, x, ckpt)
        side: list[Tensor] = []
        if self.cfg.deep_supervision:
            side.append(self.get_submodule("out_4")(x))
        for i in (3, 2, 1, 0):
            x = skips[i] + _run(self.get_submodule(f"up_{i}"), x, ckpt)
            x = _run(self.get_submodule(f"dec_block_{i}"), x, ckpt)
            if self.cfg.deep_supervision and i > 0:
                side.append(self.get_submodule(f"out_{i}")(x))
        out = self.out_0(x)
        return [out, *reversed(side)] if self.cfg.deep_supervision else out


class MedNeXtClassifier(nn.Module):
    """The MedNeXt encoder (upstream's names) and a multilabel head (our design, the one
    MedNeXt.md recommends): the bottleneck averaged over space, ``head`` = Linear(16 C,
    labels); logits out, sigmoid for probabilities. Measured against the mean and maximum
    concatenated on the synthetic training test: the same held-out AUROC (0.95 / 1.0 / 1.0
    against 0.94 / 1.0 / 0.995), so the simpler head stays."""

    def __init__(self, cfg: MedNeXtConfig, n_labels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_labels = n_labels
        _add_encoder(self, cfg)
        self.head = nn.Linear(16 * cfg.n_channels, n_labels)

    def pooled(self, x: Tensor) -> Tensor:
        """(batch, 16 C): the bottleneck's mean over space."""
        _, bottom = _encode(self, x, self.cfg.checkpointing)
        return bottom.mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        """(batch, labels) logits of a (batch, 1, D, H, W) input."""
        return self.head(self.pooled(x))  # type: ignore[no-any-return]


def classifier_for(card: ModelCard) -> MedNeXtClassifier:
    """The untrained classifier a card describes (variant or custom sizes, kernel, labels)."""
    cfg = MedNeXtConfig.from_architecture(card.arch, card.kernel_size)
    return MedNeXtClassifier(cfg, len(card.labels))
