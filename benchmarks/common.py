"""Shared by the benchmarks: test data locations, the synthetic 500-slice series, and peak
memory measured in a child process (so one case's allocations never inflate another's)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO.parent / "shared" / "testdata"
REAL_CTS = {
    "chest CT 100 (LUNG, explicit LE)": TESTDATA / "chest-ct-100-lung",
    "chest CT 248 (JPEG lossless)": TESTDATA / "chest-ct-248-pneumonia-jpegll",
}


def synthetic_series(folder: Path, n: int = 500) -> list[Path]:
    """A 500-slice 512x512 axial series (0.625 mm), written in chunks to bound memory."""
    sys.path.insert(0, str(REPO))
    from pydicom.uid import generate_uid

    from tests.factory import ct_series, write_series

    study, series = generate_uid(), generate_uid()
    paths: list[Path] = []
    for start in range(0, n, 50):
        chunk = ct_series(
            min(50, n - start),
            512,
            512,
            seed=f"bench{start}",
            study_uid=study,
            series_uid=series,
            hu=lambda z, y, x: -1000.0 + ((x * 7 + y * 13 + z * 3) % 900),
            origin=(-180.0, -180.0, -300.0 + 0.625 * start),
            slice_spacing=0.625,
        )
        paths += write_series(chunk, folder / f"part{start:03d}")
    return paths


def in_child(script: Path, *args: str) -> dict[str, float]:
    """Run ``script --child ARGS`` and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def peak_rss_mb(pids: Sequence[int]) -> float:
    """Sum of VmHWM over the receiver's processes (main process and workers)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (decoding pools, receiving processes)."""
    result = [pid]
    for child in children(pid):
        result += process_tree(child)
    return result


def random_ctclip(seed: int = 0) -> Any:
    """CT-CLIP of the published shape with seeded random weights: parameters uniform in
    +-0.02, codebook rows random unit vectors, buffers as the model defines them (zero
    LayerNorm biases; ``to_empty`` would leave them as whatever memory held)."""
    sys.path.insert(0, str(REPO))
    import torch

    from inference.ctclip.model import CTCLIP

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = CTCLIP()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.02, 0.02)
        for name, buffer in model.named_buffers():
            buffer.fill_(1.0 if name.endswith("initted") else 0.0)
        emb = model.visual_transformer.vq._codebook.embed
        emb.copy_(torch.nn.functional.normalize(torch.randn_like(emb), dim=-1))
    return model


def ctclip_store(folder: Path) -> Path:
    """A weights store as a site has it after registering the published CT-CLIP_v2 and
    CT_LiPro_v2 files and caching the prompt latents, with seeded random weights of the
    real shape (3.5 GB on disk): the node's cost does not depend on the values."""
    sys.path.insert(0, str(REPO))
    import torch

    from inference import weights_store
    from inference.ctclip.scoring import prompts, text_cache_path

    folder.mkdir(parents=True, exist_ok=True)
    model = random_ctclip()
    state = dict(model.state_dict())
    state["text_transformer.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(state, folder / "CT-CLIP_v2.pt")
    lipro = {f"trained_model.{k}": v for k, v in state.items()}
    lipro["classifier.weight"] = torch.randn(18, 512) * 0.1
    lipro["classifier.bias"] = torch.zeros(18)
    torch.save(lipro, folder / "CT_LiPro_v2.pt")
    del model, state, lipro
    base = weights_store.register(
        folder, folder / "CT-CLIP_v2.pt", name="ct-clip-v2", analyzer="ctclip"
    )
    weights_store.register(
        folder, folder / "CT_LiPro_v2.pt", name="ct-lipro-v2", analyzer="ctclip-supervised"
    )
    latents = torch.nn.functional.normalize(torch.randn(36, 512), dim=-1)
    torch.save(
        {"sha256": base.sha256, "prompts": prompts(), "latents": latents},
        text_cache_path(folder / "CT-CLIP_v2.pt", base.sha256),
    )
    return folder
