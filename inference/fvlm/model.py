"""fVLM modules whose state dict matches the published checkpoint key for key.

Written from the facts in ``shared/models/fVLM.md`` (Shui et al., "Large-scale and fine-grained
vision-language pre-training for enhanced CT image understanding", ICLR 2025): a MONAI-style 3D
ViT-B whose outputs of blocks 3, 6, 9 and final LayerNorm are read by one learned query token per
organ (lung, heart, esophagus, aorta) through a shared multi-head attention, each organ with its
own projection into the latent space; a BERT text encoder (the CT-CLIP one, without pooler) and a
text projection. Module names exist only to reproduce the published key names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.ctclip.model import BertConfig, BertModel
from inference.fvlm.results import ORGANS

# The text encoder's published sizes (CXR-BERT-specialized) without its pooler; the original
# adds no token-type embeddings (inference.fvlm.checkpoint).
CXR_BERT = BertConfig(type_vocab_size=0, add_pooling_layer=False)


@dataclass(frozen=True)
class ViTConfig:
    """Image-encoder hyperparameters; defaults are the published ViT-B's."""

    img_size: tuple[int, int, int] = (112, 256, 352)
    patch_size: tuple[int, int, int] = (16, 16, 32)
    in_channels: int = 1
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    qkv_bias: bool = True
    taps: tuple[int, ...] = (3, 6, 9)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid of the learned position embedding (7 x 16 x 11 published)."""
        d, h, w = (s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        return (d, h, w)


@dataclass(frozen=True)
class FVLMConfig:
    """The whole model: both encoders, the latent size and the organ attention's heads."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    bert: BertConfig = CXR_BERT
    embed_dim: int = 256
    organ_heads: int = 4
    # Prompts are padded to this length as the original tokenises them; padded positions are
    # masked, so the length does not change a prompt's latent.
    max_txt_len: int = 128

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FVLMConfig:
        """From the form of ``shared/models/fvlm-tiny-reference/tiny_config.json`` (keys
        ``vit``, ``bert``, ``embed_dim``, ``organ_attention``, ``max_txt_len``; others ignored);
        ``ValueError`` naming a bad hyperparameter."""
        try:
            v = raw.get("vit", {})
            vit = ViTConfig(
                img_size=_triple(v.get("img_size", ViTConfig.img_size)),
                patch_size=_triple(v.get("patch_size", ViTConfig.patch_size)),
                in_channels=int(v.get("in_channels", 1)),
                hidden_size=int(v.get("hidden_size", 768)),
                mlp_dim=int(v.get("mlp_dim", 3072)),
                num_layers=int(v.get("num_layers", 12)),
                num_heads=int(v.get("num_heads", 12)),
                qkv_bias=bool(v.get("qkv_bias", True)),
                taps=tuple(v.get("hidden_state_taps_after_block_index", (3, 6, 9))),
            )
            b = raw.get("bert", {})
            known = set(BertConfig.__dataclass_fields__)
            bert = BertConfig(
                **{k: b[k] for k in b if k in known and k != "type_vocab_size"},
                type_vocab_size=0,
                add_pooling_layer=bool(raw.get("add_pooling_layer", False)),
            )
            return cls(
                vit=vit,
                bert=bert,
                embed_dim=int(raw.get("embed_dim", 256)),
                organ_heads=int(raw.get("organ_attention", {}).get("num_heads", 4)),
                max_txt_len=int(raw.get("max_txt_len", 128)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad fVLM configuration: {exc}") from exc


def _triple(value: Any) -> tuple[int, int, int]:
    a, b, c = (int(n) for n in value)
    return (a, b, c)


class PatchEmbedding(nn.Module):
    """Conv3d patches (kernel = stride = patch) plus a learned position embedding for the
    training grid, resampled trilinearly to another window's grid."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.grid = cfg.grid
        n = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_embeddings = nn.Conv3d(
            cfg.in_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size
        )
        self.position_embeddings = nn.Parameter(torch.zeros(1, n, cfg.hidden_size))

    def positions(self, grid: tuple[int, int, int]) -> Tensor:
        """(1, tokens, hidden) position embedding for ``grid``."""
        pos = self.position_embeddings
        if grid == self.grid:
            return pos
        volume = pos.reshape(1, *self.grid, -1).permute(0, 4, 1, 2, 3)
        resized = F.interpolate(volume, size=grid, mode="trilinear", align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        patches: Tensor = self.patch_embeddings(x)
        grid = (int(patches.shape[2]), int(patches.shape[3]), int(patches.shape[4]))
        return patches.flatten(2).transpose(1, 2) + self.positions(grid)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection laid out (qkv, heads, dim)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, dim))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """linear1 -> exact GELU -> linear2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.gelu(self.linear1(x)))  # type: ignore[no-any-return]


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size)
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.hidden_size)
        self.mlp = MLP(cfg.hidden_size, cfg.mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class ViT(nn.Module):
    """The image encoder: patch embedding, blocks, final LayerNorm."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = PatchEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The normed output and the four levels the organ queries read: the outputs of the
        tapped blocks and the normed output, each (b, tokens, hidden)."""
        h = self.patch_embedding(x)
        levels: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.cfg.taps:
                levels.append(h)
        normed = self.norm(h)
        return normed, [*levels, normed]


@dataclass(frozen=True)
class OrganTrace:
    """The intermediate tensors of one organ's head (what the reference records)."""

    token_flags: Tensor
    key_value: Tensor
    attended: Tensor
    weights: Tensor
    latent: Tensor


class FVLM(nn.Module):
    """fVLM for zero-shot scoring: organ latents of an image window, prompt latents of text."""

    def __init__(self, cfg: FVLMConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or FVLMConfig()
        self.cfg = cfg
        dim = cfg.vit.hidden_size
        self.visual_encoder = ViT(cfg.vit)
        self.text_encoder = BertModel(cfg.bert)
        self.text_proj = nn.Linear(cfg.bert.hidden_size, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.attention = nn.MultiheadAttention(dim, cfg.organ_heads, dropout=0.1, batch_first=True)
        self.vision_projs = nn.ModuleList(nn.Linear(dim, cfg.embed_dim) for _ in ORGANS)
        self.query_tokens = nn.Parameter(torch.zeros(len(ORGANS), dim))

    def text_cls(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """CLS hidden state of the last layer (n, bert hidden)."""
        return self.text_encoder(input_ids, attention_mask)[:, 0, :]  # type: ignore[no-any-return]

    def text_latents(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """L2-normalised prompt latents (n, embed_dim)."""
        return F.normalize(self.text_proj(self.text_cls(input_ids, attention_mask)), dim=-1)

    def token_flags(self, mask: Tensor, organ: int) -> Tensor:
        """(b, tokens) bool: grid cells where organ ``organ`` (index into ``ORGANS``; label
        ``organ + 1``) has a voxel of the (b, 1, D, H, W) label ``mask``."""
        (pd, ph, pw), b = self.cfg.vit.patch_size, mask.shape[0]
        gd, gh, gw = (n // p for n, p in zip(mask.shape[2:], (pd, ph, pw), strict=True))
        hit = mask[:, 0, : gd * pd, : gh * ph, : gw * pw] == organ + 1
        # max-pooling with kernel = stride = patch, on booleans
        return hit.reshape(b, gd, pd, gh, ph, gw, pw).any(dim=6).any(dim=4).any(dim=2).flatten(1)

    def organ_head(self, levels: list[Tensor], flags: Tensor, organ: int) -> OrganTrace:
        """One organ's latent for one window: its query token attends to the organ's tokens of
        all levels (level after level), then the organ's projection, L2-normalised."""
        kv = torch.cat([level[:, flags] for level in levels], dim=1)
        query = self.query_tokens[organ].reshape(1, 1, -1).to(kv.dtype)
        attended, weights = self.attention(query, kv, kv, need_weights=True)
        attended = attended[:, 0]
        latent = F.normalize(self.vision_projs[organ](attended), dim=-1)
        return OrganTrace(flags, kv, attended, weights, latent)

    def organ_latents(
        self, levels: list[Tensor], labels: Tensor, organs: tuple[int, ...]
    ) -> dict[int, Tensor]:
        """The (embed_dim,) latent of each organ of ``organs`` that has tokens in one window,
        from that window's encoder levels (each (1, tokens, hidden)) and its (1, 1, D, H, W)
        organ labels."""
        latents: dict[int, Tensor] = {}
        for organ in organs:
            flags = self.token_flags(labels, organ)[0]
            if bool(flags.any()):
                latents[organ] = self.organ_head(levels, flags, organ).latent[0]
        return latents

    def logits(self, image_latent: Tensor, text_latents: Tensor) -> Tensor:
        """Similarity over the temperature: (..., n_text)."""
        return image_latent @ text_latents.t() / self.temp
