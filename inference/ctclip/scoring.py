"""Zero-shot and ClassFine scoring of a volume into the shared findings vocabulary.

Zero-shot (CT-CLIP.md, "Zero-shot scoring"): for each of the 18 CT-RATE labels the prompts
"{label} is present." / "{label} is not present."; logits are cosine similarity times
exp(temperature) and a softmax over the pair gives P(present). ClassFine (CT_LiPro_v2):
sigmoid(classifier(ReLU(image latent))). Text latents of the fixed prompts are computed once per
checkpoint (needs the tokenizer vocabulary) and cached beside the weights under its sha256.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from inference.ctclip.model import CTCLIP, ClassFine
from inference.ctclip.preprocess import preprocess
from inference.ctclip.results import to_result
from inference.findings import CT_RATE_LABELS, AnalyzerResult
from inference.volume import Volume

log = logging.getLogger(__name__)

SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def prompts() -> list[str]:
    """The 36 prompts, present/absent pairs in CT-RATE label order."""
    out: list[str] = []
    for label in CT_RATE_LABELS:
        out += [f"{label} is present.", f"{label} is not present."]
    return out


class WordPiece:
    """Lower-case BERT WordPiece tokenizer over a ``vocab.txt`` (one token a line)."""

    def __init__(self, vocab_file: Path) -> None:
        tokens = vocab_file.read_text(encoding="utf-8").splitlines()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.cls = self.vocab.get("[CLS]", SPECIAL["[CLS]"])
        self.sep = self.vocab.get("[SEP]", SPECIAL["[SEP]"])
        self.unk = self.vocab.get("[UNK]", SPECIAL["[UNK]"])

    @staticmethod
    def words(text: str) -> list[str]:
        """Lower-cased, accent-stripped words and punctuation (BERT's basic tokenizer)."""
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def _pieces(self, word: str) -> list[int]:
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def encode(self, texts: list[str], pad_to: int = 0) -> tuple[Tensor, Tensor]:
        """``input_ids`` and ``attention_mask`` (n, longest or ``pad_to``), padded with 0."""
        seqs = [
            [self.cls, *[i for w in self.words(t) for i in self._pieces(w)], self.sep]
            for t in texts
        ]
        n = max(pad_to, *(len(s) for s in seqs))
        ids = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask


def text_cache_path(weights: Path, sha256: str) -> Path:
    """Where the prompt latents of a checkpoint live: beside it, keyed by its hash."""
    return weights.with_name(f"{weights.stem}.text-latents.{sha256[:16]}.pt")


def text_latents(model: CTCLIP, weights: Path, sha256: str, vocab: Path | None) -> Tensor:
    """The (36, latent) prompt latents: cached, else computed (needs ``vocab``) and cached."""
    return cached_text_latents(weights, sha256, vocab, prompts(), model.text_latents)


def cached_text_latents(
    weights: Path,
    sha256: str,
    vocab: Path | None,
    texts: list[str],
    encode: Callable[[Tensor, Tensor], Tensor],
    pad_to: int = 0,
) -> Tensor:
    """The latents of the fixed prompts ``texts`` of a checkpoint: from the cache beside it,
    else computed once with ``encode(input_ids, attention_mask)`` (needs the tokenizer's
    ``vocab``; ids padded to ``pad_to``) and cached, so a site needs no tokenizer at run time."""
    cache = text_cache_path(weights, sha256)
    if cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored.get("sha256") == sha256 and stored.get("prompts") == texts:
            return stored["latents"]  # type: ignore[no-any-return]
        log.warning("text latent cache %s does not match the checkpoint; recomputing", cache.name)
    if vocab is None or not vocab.is_file():
        raise FileNotFoundError(
            f"no cached prompt latents for {weights.name} and no tokenizer vocabulary"
        )
    ids, mask = WordPiece(vocab).encode(texts, pad_to=pad_to)
    with torch.no_grad():
        latents = encode(ids, mask).float().cpu()
    try:
        torch.save({"sha256": sha256, "prompts": texts, "latents": latents}, cache)
    except OSError as exc:  # a read-only store (an image): the latents still serve this run
        log.warning("cannot cache the prompt latents in %s: %s", cache.parent, exc)
    return latents


def pick_device(threads: int) -> torch.device:
    """CUDA when present, else CPU limited to ``threads`` intra-op threads."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(max(1, threads))
    return torch.device("cpu")


@dataclass
class CTCLIPScorer:
    """A resident model that turns volumes into 18 probabilities (zero-shot or ClassFine).

    ``name`` is the analyzer (``ctclip`` or ``ctclip-supervised``), ``version`` the weights'
    name and version; ``autocast_bf16`` runs the encoder under bfloat16 autocast on its
    device (the quantiser's code choice and the latent projection stay in float32). One
    forward pass at a time: worker threads share the model, and two passes at once would
    double the activation memory for no gain on the same cores or GPU. A ClassFine scorer
    whose image encoder is the zero-shot one's, weight for weight, uses that encoder
    (:meth:`share_encoder`): one pass per volume serves both.
    """

    model: CTCLIP | ClassFine
    name: str
    version: str
    device: torch.device
    prompt_latents: Tensor | None = None
    autocast_bf16: bool = False
    weights_sha256: tuple[str, ...] = ()
    encoder: CTCLIPScorer | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _last: tuple[weakref.ref[Volume], Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        if isinstance(self.model, CTCLIP) and self.prompt_latents is None:
            raise ValueError("zero-shot scoring needs the prompt latents")

    @property
    def base(self) -> CTCLIP:
        """The CT-CLIP model whose image encoder this scorer runs."""
        return self.model.trained_model if isinstance(self.model, ClassFine) else self.model

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.base.cfg.input_shape

    def image_latents(self, x: Tensor) -> Tensor:
        """(1, latent) float32 image latent of a preprocessed (1, D, H, W) input."""
        kind = self.device.type
        with (
            self._lock,
            torch.no_grad(),
            torch.autocast(kind, torch.bfloat16, enabled=self.autocast_bf16),
        ):
            return self.base.image_latents(x[None].to(self.device)).float()

    def probabilities_from_latents(self, image: Tensor) -> Tensor:
        """(18,) probabilities from a (1, latent) image latent."""
        with torch.no_grad():
            if isinstance(self.model, ClassFine):
                return self.model.from_latents(image)[0].float().cpu()
            assert self.prompt_latents is not None
            text = self.prompt_latents.to(self.device)
            logits = self.model.logits(text, image)[:, 0].float().reshape(-1, 2)
            return logits.softmax(dim=-1)[:, 0].cpu()

    def probabilities_from_input(self, x: Tensor) -> Tensor:
        """(18,) probabilities from a preprocessed (1, D, H, W) input."""
        return self.probabilities_from_latents(self.image_latents(x))

    def volume_latents(self, volume: Volume) -> Tensor:
        """The image latent of ``volume``, computed once for every scorer sharing this
        encoder (the last volume's is kept, by identity, while that volume lives)."""
        if self.encoder is not None:
            return self.encoder.volume_latents(volume)
        last = self._last
        if last is not None and last[0]() is volume:
            return last[1]
        latents = self.image_latents(preprocess(volume, self.input_shape, self.device))
        self._last = (weakref.ref(volume), latents)
        return latents

    def share_encoder(self, other: CTCLIPScorer) -> bool:
        """Use ``other``'s image encoder when it is this one's, tensor for tensor, on the same
        device and precision (a ClassFine head trained on the frozen base model); this
        scorer's copy is then freed. False, and nothing changes, otherwise."""
        if (other.device, other.autocast_bf16) != (self.device, self.autocast_bf16):
            return False
        mine, theirs = self.base.state_dict(), other.base.state_dict()
        keys = set(mine) - {"temperature"}
        if keys != set(theirs) - {"temperature"}:
            return False
        if not all(torch.equal(mine[k], theirs[k]) for k in sorted(keys)):
            return False
        if isinstance(self.model, ClassFine):
            self.model.trained_model = other.base
        self.encoder = other
        return True

    def analyze(self, volume: Volume) -> AnalyzerResult:
        """Score ``volume``: findings carry P(present), features are named by analyzer and
        label (``inference.ctclip.results``)."""
        probs = self.probabilities_from_latents(self.volume_latents(volume)).tolist()
        return to_result(probs, self.name, self.version, self.weights_sha256)
