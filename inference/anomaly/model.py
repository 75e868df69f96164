"""The guided-diffusion UNet and its noised-image classifier (diffusion-anomaly.md).

Wolleb et al. build both networks from OpenAI's guided-diffusion: the denoiser is a
class-conditional UNet with learned variance, the classifier is its encoder half with an
attention-pooling head, trained on noised slices and their timestep. Module and parameter
names follow the original's state dicts (``input_blocks.1.0.in_layers.2.weight``), so the
files a site trained with the original load strictly into these modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

GROUPS = 32


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: cosines then sines."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activations' type (as the original)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def norm(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels)


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 convolution (``op``), or average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            if use_conv
            else nn.AvgPool2d(kernel_size=2, stride=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # type: ignore[no-any-return]


class Upsample(nn.Module):
    """Double the resolution (nearest), then optionally a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep (and class) embedding; with
    ``scale_shift`` the embedding scales and shifts the second normalisation, else it is
    added; ``resample`` makes it the residual down- or up-sampling block."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        scale_shift: bool,
        resample: str = "",
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample = resample
        if resample == "down":
            self.h_upd: nn.Module = Downsample(channels, False)
            self.x_upd: nn.Module = Downsample(channels, False)
        elif resample == "up":
            self.h_upd = Upsample(channels, False)
            self.x_upd = Upsample(channels, False)
        width = 2 * out_channels if scale_shift else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, width))
        self.out_layers = nn.Sequential(
            norm(out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in list(self.out_layers)[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h  # type: ignore[no-any-return]


def attention(qkv: Tensor, heads: int, *, interleaved: bool) -> Tensor:
    """Multi-head attention over ``qkv`` (batch, 3 * heads * ch, length). ``interleaved``
    is the original's legacy layout (each head's q, k, v together); otherwise all queries,
    then all keys, then all values (the attention pool's layout)."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    if interleaved:
        q, k, v = torch.split(qkv.reshape(bs * heads, ch * 3, length), ch, dim=1)
    else:
        q, k, v = (p.reshape(bs * heads, ch, length) for p in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (1-D convolutions as projections)."""

    def __init__(self, channels: int, heads: int, head_channels: int) -> None:
        super().__init__()
        self.heads = heads if head_channels == -1 else channels // head_channels
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        h = attention(self.qkv(self.norm(flat)), self.heads, interleaved=True)
        out: Tensor = flat + self.proj_out(h)
        return out.reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """The classifier's head: attention from the mean token over all positions."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(channels, spatial**2 + 1))
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out, 1)
        self.heads = channels // head_channels

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = attention(self.qkv_proj(x), self.heads, interleaved=False)
        return self.c_proj(x)[:, :, 0]  # type: ignore[no-any-return]


class Step(nn.ModuleList):
    """One entry of ``input_blocks``/``output_blocks``: layers applied in order, residual
    blocks given the embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v)
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class UNetConfig:
    """The denoiser's hyperparameters; defaults are the paper's 256 model (diffusion-anomaly.md).
    ``attention_ds`` are down-sampling factors (image size // attention resolution)."""

    image_size: int = 256
    in_channels: int = 1
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (16,)
    num_heads: int = 1
    num_head_channels: int = -1
    num_classes: int = 2
    learn_sigma: bool = True
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False

    @classmethod
    def from_original(cls, raw: dict[str, Any], in_channels: int = 1) -> UNetConfig:
        """From the original's ``create_model_and_diffusion`` arguments (tiny_config.json's
        ``unet``): attention given as resolutions, channel_mult as text."""
        size = int(raw["image_size"])
        mult = _ints(raw["channel_mult"]) if raw.get("channel_mult") else cls.channel_mult
        return cls(
            image_size=size,
            in_channels=in_channels,
            model_channels=int(raw["num_channels"]),
            channel_mult=mult,
            num_res_blocks=int(raw["num_res_blocks"]),
            attention_ds=tuple(size // r for r in _ints(raw["attention_resolutions"])),
            num_heads=int(raw["num_heads"]),
            num_head_channels=int(raw["num_head_channels"]),
            num_classes=2 if raw["class_cond"] else 0,
            learn_sigma=bool(raw["learn_sigma"]),
            use_scale_shift_norm=bool(raw["use_scale_shift_norm"]),
            resblock_updown=bool(raw["resblock_updown"]),
        )


@dataclass(frozen=True)
class ClassifierConfig:
    """The noised-image classifier (EncoderUNetModel) of the paper: width 32, depth 4,
    attention at resolutions 32, 16 and 8 of a 256 input, attention pooling, 2 classes."""

    image_size: int = 256
    in_channels: int = 1
    model_channels: int = 32
    out_channels: int = 2
    num_res_blocks: int = 4
    attention_ds: tuple[int, ...] = (8, 16, 32)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    pool: str = field(default="attention")

    @classmethod
    def from_original(cls, raw: dict[str, Any]) -> ClassifierConfig:
        """From the ``EncoderUNetModel`` constructor's arguments (tiny_config.json's
        ``classifier``: attention already as down-sampling factors)."""
        return cls(
            image_size=int(raw["image_size"]),
            in_channels=int(raw["in_channels"]),
            model_channels=int(raw["model_channels"]),
            out_channels=int(raw["out_channels"]),
            num_res_blocks=int(raw["num_res_blocks"]),
            attention_ds=_ints(raw["attention_resolutions"]),
            channel_mult=_ints(raw["channel_mult"]),
            num_head_channels=int(raw["num_head_channels"]),
            use_scale_shift_norm=bool(raw["use_scale_shift_norm"]),
            resblock_updown=bool(raw["resblock_updown"]),
            pool=str(raw["pool"]),
        )


def _time_embed(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, 4 * channels)
    )


def _encoder(
    blocks: nn.ModuleList,
    *,
    in_channels: int,
    width: int,
    mult: Sequence[int],
    depth: int,
    attention_ds: Sequence[int],
    heads: int,
    head_channels: int,
    scale_shift: bool,
    updown: bool,
) -> tuple[list[int], int, int]:
    """Fill ``blocks`` with the down-sampling path; the widths of every block's output (the
    UNet's skip connections), the final width and down-sampling factor."""
    emb = 4 * width
    ch = mult[0] * width
    blocks.append(Step([nn.Conv2d(in_channels, ch, 3, padding=1)]))
    widths, ds = [ch], 1
    for level, m in enumerate(mult):
        for _ in range(depth):
            layers: list[nn.Module] = [
                ResBlock(ch, emb, m * width, scale_shift=scale_shift),
            ]
            ch = m * width
            if ds in attention_ds:
                layers.append(AttentionBlock(ch, heads, head_channels))
            blocks.append(Step(layers))
            widths.append(ch)
        if level != len(mult) - 1:
            down: nn.Module = (
                ResBlock(ch, emb, ch, scale_shift=scale_shift, resample="down")
                if updown
                else Downsample(ch, True)
            )
            blocks.append(Step([down]))
            widths.append(ch)
            ds *= 2
    return widths, ch, ds


def _middle(ch: int, emb: int, heads: int, head_channels: int, scale_shift: bool) -> Step:
    return Step(
        [
            ResBlock(ch, emb, ch, scale_shift=scale_shift),
            AttentionBlock(ch, heads, head_channels),
            ResBlock(ch, emb, ch, scale_shift=scale_shift),
        ]
    )


class UNet(nn.Module):
    """The class-conditional denoiser: ``forward(x, t, y)`` -> (epsilon, variance channels)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.model_channels
        self.time_embed = _time_embed(w)
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes, 4 * w)
        self.input_blocks = nn.ModuleList()
        widths, ch, ds = _encoder(
            self.input_blocks,
            in_channels=cfg.in_channels,
            width=w,
            mult=cfg.channel_mult,
            depth=cfg.num_res_blocks,
            attention_ds=cfg.attention_ds,
            heads=cfg.num_heads,
            head_channels=cfg.num_head_channels,
            scale_shift=cfg.use_scale_shift_norm,
            updown=cfg.resblock_updown,
        )
        self.middle_block = _middle(
            ch, 4 * w, cfg.num_heads, cfg.num_head_channels, cfg.use_scale_shift_norm
        )
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [
                    ResBlock(ch + widths.pop(), 4 * w, m * w, scale_shift=cfg.use_scale_shift_norm)
                ]
                ch = m * w
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels))
                if level and i == cfg.num_res_blocks:
                    layers.append(
                        ResBlock(ch, 4 * w, ch, scale_shift=cfg.use_scale_shift_norm, resample="up")
                        if cfg.resblock_updown
                        else Upsample(ch, True)
                    )
                    ds //= 2
                self.output_blocks.append(Step(layers))
        out = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        if self.cfg.num_classes:
            if y is None:
                raise ValueError("a class-conditional UNet needs the class y")
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # type: ignore[no-any-return]


class Classifier(nn.Module):
    """The noised-image classifier: ``forward(x, t)`` -> class logits (0 healthy, 1 diseased)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        if cfg.pool != "attention":
            raise ValueError(f"classifier pool {cfg.pool!r}: only 'attention' is implemented")
        self.cfg = cfg
        w = cfg.model_channels
        self.time_embed = _time_embed(w)
        self.input_blocks = nn.ModuleList()
        _, ch, ds = _encoder(
            self.input_blocks,
            in_channels=cfg.in_channels,
            width=w,
            mult=cfg.channel_mult,
            depth=cfg.num_res_blocks,
            attention_ds=cfg.attention_ds,
            heads=1,
            head_channels=cfg.num_head_channels,
            scale_shift=cfg.use_scale_shift_norm,
            updown=cfg.resblock_updown,
        )
        self.middle_block = _middle(ch, 4 * w, 1, cfg.num_head_channels, cfg.use_scale_shift_norm)
        self.out = nn.Sequential(
            norm(ch),
            nn.SiLU(),
            AttentionPool2d(cfg.image_size // ds, ch, cfg.num_head_channels, cfg.out_channels),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb))  # type: ignore[no-any-return]
