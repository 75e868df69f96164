"""CT-CLIP v2 modules whose state dict matches the released checkpoints key for key.

Written from the facts in ``shared/models/CT-CLIP.md`` (Hamamci et al., "A foundation model
utilizing chest CT volumes and radiology reports", CT-CLIP v2 mean-pooling release): a CTViT image
encoder (factorised spatial/temporal transformer, cosine-similarity vector quantiser), a BERT text
encoder, and linear projections to a shared latent space. Module and attribute names exist only to
reproduce the published key names; the quirks of the original are kept on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class CTViTConfig:
    """Image-encoder hyperparameters; defaults are the released v2 checkpoint's."""

    dim: int = 512
    codebook_size: int = 8192
    image_size: int = 480
    patch_size: int = 20
    temporal_patch_size: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    channels: int = 1
    # Slices of the model input (CT-CLIP.md, "Preprocessing"); not part of the checkpoint.
    frames: int = 240


@dataclass(frozen=True)
class BertConfig:
    """Text-encoder hyperparameters (CXR-BERT-specialized)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    # fVLM's BERT has neither a pooler nor token-type embeddings (type_vocab_size 0: none).
    add_pooling_layer: bool = True


@dataclass(frozen=True)
class CTCLIPConfig:
    """The whole model: both encoders and the latent sizes."""

    ctvit: CTViTConfig = CTViTConfig()
    bert: BertConfig = BertConfig()
    dim_image: int = 294912
    dim_text: int = 768
    dim_latent: int = 512

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CTCLIPConfig:
        """From the ``{"ctvit": {...}, "bert": {...}, "ctclip": {...}}`` form of
        ``shared/models/ctclip-tiny-reference/tiny_config.json`` (other keys ignored);
        ``ValueError`` naming an unknown or missing hyperparameter."""
        try:
            return cls(
                ctvit=CTViTConfig(**raw.get("ctvit", {})),
                bert=BertConfig(**raw.get("bert", {})),
                **raw.get("ctclip", {}),
            )
        except TypeError as exc:
            raise ValueError(f"bad CT-CLIP configuration: {exc}") from exc

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) of the model input."""
        return (self.ctvit.frames, self.ctvit.image_size, self.ctvit.image_size)


def l2norm(t: Tensor) -> Tensor:
    """L2-normalise the last axis."""
    return F.normalize(t, dim=-1)


class GainNorm(nn.Module):
    """LayerNorm with a learned gain and a fixed zero bias buffer (keys ``gamma``/``beta``)."""

    beta: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class PEG(nn.Module):
    """Position-generating depthwise 3x3x3 convolution, causal (2, 0) padding on the first axis.

    The input (n, tokens, d) is reshaped straight to (b, t, h, w, d); for the temporal transformer
    this reinterprets a (b*h*w, t, d) tensor without permuting, as the released weights expect.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
        orig = x.shape
        y = x.reshape(*shape, -1).permute(0, 4, 1, 2, 3)
        y = F.pad(y, (1, 1, 1, 1, 2, 0))
        y = self.dsconv(y).permute(0, 2, 3, 4, 1)
        return y.reshape(orig)  # type: ignore[no-any-return]


class Attention(nn.Module):
    """Cosine-similarity attention: normalised q and k with learned per-dimension scales, x8.

    Keys and values are projected from the un-normalised input (only queries see ``norm``),
    as in the original; ``context_norm`` is loaded but unused without cross-attention.
    """

    def __init__(self, dim: int, dim_head: int, heads: int, scale: float = 8.0) -> None:
        super().__init__()
        self.heads = heads
        self.scale = scale
        inner = dim_head * heads
        self.norm = GainNorm(dim)
        self.context_norm = GainNorm(dim)
        self.null_kv = nn.Parameter(torch.zeros(heads, 0, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        kv_input = x
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        q = l2norm(q) * self.q_scale
        k = l2norm(k) * self.k_scale
        # A bias with the batch axis spelled out lets SDPA take its fused path on CPU
        # (3x faster for the spatial transformer than a broadcast 3-D mask).
        bias = None if attn_bias is None else attn_bias.to(q.dtype).expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)  # type: ignore[no-any-return]


class GEGLU(nn.Module):
    """Gated GELU: value half times GELU of the gate half."""

    def forward(self, x: Tensor) -> Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * value


def feed_forward(dim: int, mult: float = 4.0) -> nn.Sequential:
    """LayerNorm -> Linear(dim, 2*inner) -> GEGLU -> Dropout -> Linear(inner, dim); keys 0,1,4."""
    inner = int(mult * (2 / 3) * dim)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner * 2, bias=False),
        GEGLU(),
        nn.Dropout(0.0),
        nn.Linear(inner, dim, bias=False),
    )


class Transformer(nn.Module):
    """Layers of [PEG, attention, (no cross-attention), feed-forward] and a final norm."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PEG(dim), Attention(dim, dim_head, heads), nn.Identity(), feed_forward(dim)]
            )
            for _ in range(depth)
        )
        self.norm_out = GainNorm(dim)

    def forward(
        self, x: Tensor, video_shape: tuple[int, int, int, int], attn_bias: Tensor | None = None
    ) -> Tensor:
        for layer in self.layers:
            peg, attn, _, ff = layer[0], layer[1], layer[2], layer[3]  # type: ignore[index]
            x = peg(x, video_shape) + x
            x = attn(x, attn_bias) + x
            x = ff(x) + x
        return self.norm_out(x)  # type: ignore[no-any-return]


class ContinuousPositionBias(nn.Module):
    """Relative position bias from an MLP over sign(d)*log(|d|+1) of 2-D grid offsets."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)),
                nn.Linear(dim, heads),
            ]
        )

    def forward(self, h: int, w: int, device: torch.device) -> Tensor:
        """(heads, h*w, h*w) bias. The MLP acts on each offset alone, so it runs once per
        distinct offset ((2h-1)(2w-1) of them) and the result is gathered for every pair:
        the same numbers as running it on all (h*w)^2 pairs, at 1/150 of the cost for the
        published 24x24 grid (the full version was about a fifth of the encoder's FLOPs)."""
        dy = torch.arange(-(h - 1), h, device=device)
        dx = torch.arange(-(w - 1), w, device=device)
        offsets = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2)
        rel = offsets.float()
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        for layer in self.net:
            rel = layer(rel)
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        index = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (
            xs[:, None] - xs[None, :] + w - 1
        )
        return rel[index].permute(2, 0, 1)


class Codebook(nn.Module):
    """Cosine-similarity codebook (keys ``initted``, ``cluster_size``, ``embed``)."""

    initted: Tensor
    cluster_size: Tensor
    embed: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, size))
        self.register_buffer("embed", torch.zeros(1, size, dim))


class VectorQuantizer(nn.Module):
    """Replaces each token by the codebook row of greatest cosine similarity."""

    BLOCK = 2048

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self._codebook = Codebook(dim, size)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens in blocks of ``BLOCK``: the full similarity matrix of the published model
        (13824 tokens x 8192 codes) would take 450 MB for nothing but an argmax."""
        embed = self._codebook.embed[0]
        flat = x.reshape(-1, x.shape[-1])
        with torch.autocast(x.device.type, enabled=False):  # bf16 would flip near-ties
            codes = l2norm(embed.float()).t()
            index = torch.cat(
                [
                    torch.matmul(l2norm(block.float()), codes).argmax(dim=-1)
                    for block in torch.split(flat, self.BLOCK)
                ]
            )
        return embed[index].reshape(x.shape).to(x.dtype)


class CTViT(nn.Module):
    """The image encoder: 10x20x20 patches -> spatial then temporal transformer -> quantiser."""

    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, p, pt, d = cfg.channels, cfg.patch_size, cfg.temporal_patch_size, cfg.dim
        self.spatial_rel_pos_bias = ContinuousPositionBias(d, cfg.heads)
        self.to_patch_emb_first_frame = nn.Sequential(
            nn.Identity(), nn.LayerNorm(c * p * p), nn.Linear(c * p * p, d), nn.LayerNorm(d)
        )
        patch = c * pt * p * p
        self.to_patch_emb = nn.Sequential(
            nn.Identity(), nn.LayerNorm(patch), nn.Linear(patch, d), nn.LayerNorm(d)
        )
        self.enc_spatial_transformer = Transformer(d, cfg.spatial_depth, cfg.dim_head, cfg.heads)
        self.enc_temporal_transformer = Transformer(d, cfg.temporal_depth, cfg.dim_head, cfg.heads)
        self.vq = VectorQuantizer(d, cfg.codebook_size)
        self.to_pixels_first_frame = nn.Sequential(nn.Linear(d, c * p * p))
        self.to_pixels = nn.Sequential(nn.Linear(d, patch))

    def patchify(self, video: Tensor) -> Tensor:
        """(b, c, T, H, W) -> (b, t, h, w, c*pt*p*p), patch contents ordered (c, pt, p, p)."""
        b, c, tt, hh, ww = video.shape
        p, pt = self.cfg.patch_size, self.cfg.temporal_patch_size
        x = video.reshape(b, c, tt // pt, pt, hh // p, p, ww // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, tt // pt, hh // p, ww // p, c * pt * p * p)

    def embed(self, video: Tensor) -> Tensor:
        """Patch embedding: (b, t, h, w, dim)."""
        return self.to_patch_emb[1:](self.patchify(video))  # type: ignore[no-any-return]

    def spatial(self, tokens: Tensor) -> Tensor:
        """Spatial transformer over each slab: returns (b*t, h*w, d)."""
        b, t, h, w, d = tokens.shape
        bias = self.spatial_rel_pos_bias(h, w, tokens.device)
        x = tokens.reshape(b * t, h * w, d)
        return self.enc_spatial_transformer(x, (b, t, h, w), bias)  # type: ignore[no-any-return]

    def temporal(self, x: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
        """Temporal transformer along depth: (b*t, h*w, d) -> (b*h*w, t, d)."""
        b, t, h, w = shape
        x = x.reshape(b, t, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, -1)
        return self.enc_temporal_transformer(x, shape)  # type: ignore[no-any-return]

    def forward(self, video: Tensor) -> Tensor:
        """Encoded, quantised tokens (b, t, h, w, d)."""
        tokens = self.embed(video)
        b, t, h, w, _ = tokens.shape
        x = self.temporal(self.spatial(tokens), (b, t, h, w))
        x = x.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4).reshape(b, t * h * w, -1)
        return self.vq(x).reshape(b, t, h, w, -1)  # type: ignore[no-any-return]


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, LayerNorm."""

    position_ids: Tensor

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        )
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.register_buffer(
            "position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=False
        )

    def forward(self, input_ids: Tensor) -> Tensor:
        n = input_ids.shape[1]
        pos = self.position_ids[:, :n]
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(torch.zeros_like(input_ids))
        return self.LayerNorm(x)  # type: ignore[no-any-return]


class BertSelfAttention(nn.Module):
    """Scaled dot-product self-attention with an additive padding mask."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, hid = x.shape
        q, k, v = (
            t(x).reshape(b, n, self.heads, -1).transpose(1, 2)
            for t in (self.query, self.key, self.value)
        )
        sim = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hid // self.heads) + mask
        return torch.matmul(sim.softmax(-1), v).transpose(1, 2).reshape(b, n, hid)


class BertDenseNorm(nn.Module):
    """dense -> residual add -> LayerNorm (``attention.output`` and ``output``)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)  # type: ignore[no-any-return]


class BertAttention(nn.Module):
    """Self-attention block (keys ``self`` and ``output``)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertDenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        attn: BertSelfAttention = self.self
        return self.output(attn(x, mask), x)  # type: ignore[no-any-return]


class BertIntermediate(nn.Module):
    """dense -> exact GELU."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """One post-norm encoder layer."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertDenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)  # type: ignore[no-any-return]


class BertEncoder(nn.Module):
    """The layer stack."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertPooler(nn.Module):
    """Loaded for key compatibility; CT-CLIP uses the CLS hidden state, not the pooler."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class BertModel(nn.Module):
    """A plain BERT encoder returning the last hidden state."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if cfg.add_pooling_layer else None

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.embeddings(input_ids)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x  # type: ignore[no-any-return]


class CTCLIP(nn.Module):
    """CT-CLIP: image and text encoders with latent projections and a learned temperature."""

    def __init__(self, cfg: CTCLIPConfig = CTCLIPConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.text_transformer = BertModel(cfg.bert)
        self.visual_transformer = CTViT(cfg.ctvit)
        self.to_text_latent = nn.Linear(cfg.dim_text, cfg.dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(cfg.dim_image, cfg.dim_latent, bias=False)
        self.to_text_latent_extra = nn.Linear(cfg.dim_text, cfg.dim_latent, bias=False)
        self.to_visual_latent_extra = nn.Linear(cfg.dim_image, cfg.dim_latent, bias=False)

    def text_cls(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """CLS token of the last hidden state."""
        return self.text_transformer(input_ids, attention_mask)[:, 0, :]  # type: ignore[no-any-return]

    def text_latents(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """L2-normalised text latents (n, dim_latent)."""
        return l2norm(self.to_text_latent(self.text_cls(input_ids, attention_mask)))

    def image_latents(self, volume: Tensor) -> Tensor:
        """L2-normalised image latents (b, dim_latent) from (b, 1, T, H, W)."""
        tokens = self.visual_transformer(volume)
        with torch.autocast(volume.device.type, enabled=False):  # codebook rows in, exactly
            pooled = tokens.float().mean(dim=1).reshape(tokens.shape[0], -1)
            return l2norm(self.to_visual_latent(pooled.to(self.to_visual_latent.weight.dtype)))

    def logits(self, text_latents: Tensor, image_latents: Tensor) -> Tensor:
        """Cosine similarity times exp(temperature): (n_text, n_image)."""
        return text_latents @ image_latents.t() * self.temperature.exp()


class ClassFine(nn.Module):
    """CT_LiPro_v2 (ClassFine): the base model under ``trained_model`` and an 18-way classifier."""

    def __init__(self, cfg: CTCLIPConfig = CTCLIPConfig(), n_classes: int = 18) -> None:
        super().__init__()
        self.trained_model = CTCLIP(cfg)
        self.classifier = nn.Linear(cfg.dim_latent, n_classes)

    def probabilities(self, volume: Tensor) -> Tensor:
        """sigmoid(classifier(ReLU(image latent))): (b, 18)."""
        return self.from_latents(self.trained_model.image_latents(volume))

    def from_latents(self, latents: Tensor) -> Tensor:
        """The classifier's probabilities (b, 18) from L2-normalised image latents."""
        return torch.sigmoid(self.classifier(F.relu(latents)))
