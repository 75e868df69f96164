"""fVLM's windows and scoring on synthetic volumes: the four-organ path (windows batched by shape,
organs scored in other organs' windows, probabilities averaged), the lung-only fallback, the
orientation and TotalSegmentator's classes merged into fVLM's organs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import numpy.typing as npt
import torch

from inference.analyzer import Segmented
from inference.ctclip.scoring import WordPiece
from inference.fvlm.model import FVLM
from inference.fvlm.organs import ORGAN_CLASSES, from_nifti_labels, merge, to_nifti_arrays
from inference.fvlm.preprocess import ROI, label_volume, organ_windows, prepare, window_bounds
from inference.fvlm.results import LUNG_ONLY, ORGAN_LABELS, ORGANS, prompts
from inference.fvlm.scoring import FVLMScorer
from inference.volume import SliceRef, Volume
from tests.fvlm_store import TINY, tiny_config, tiny_state, vocab_file


def _volume(voxels: npt.NDArray[np.int16], affine: npt.NDArray[np.float64] | None = None) -> Volume:
    spacing = (3.0, 1.0, 1.0)
    if affine is None:
        affine = np.diag([1.0, 1.0, 3.0, 1.0])
    slices = tuple(SliceRef("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{i}") for i in range(len(voxels)))
    return Volume(voxels, spacing, affine, "1.2.3", "1.2.3.4", "1.2.3.5", slices)


def _organs(shape: tuple[int, int, int]) -> dict[str, npt.NDArray[np.bool_]]:
    """Boxes for the four organs of a (z, y, x) volume at 3 x 1 x 1 mm reaching into the
    abdomen: lungs around a heart that lies wholly inside the lung window, an esophagus lower
    down (a window of the same shape elsewhere) and an aorta longer than a window."""
    masks = {o: np.zeros(shape, dtype=bool) for o in ORGANS}
    masks["lung"][10:100, 40:240, 30:330] = True
    masks["heart"][40:70, 120:200, 150:230] = True
    masks["esophagus"][120:180, 210:225, 170:185] = True
    masks["aorta"][15:190, 200:215, 190:205] = True
    for organ in ("heart", "esophagus", "aorta"):
        masks["lung"] &= ~masks[organ]
    return masks


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> FVLMScorer:
    model = FVLM(tiny_config())
    state = tiny_state(seed=5)
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    vocab = vocab_file(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    ids, mask = WordPiece(vocab).encode(prompts(), pad_to=TINY["max_txt_len"])
    with torch.no_grad():
        latents = model.text_latents(ids, mask)
    return FVLMScorer(model.eval(), "tiny", torch.device("cpu"), latents, batch=4)


def test_four_organs_windows_batches_and_averages(scorer: FVLMScorer) -> None:
    rng = np.random.default_rng(0)
    shape = (200, 300, 360)
    volume = _volume(rng.integers(-1000, 400, shape).astype(np.int16))
    image, mask = prepare(volume, label_volume(_organs(shape)))
    windows = organ_windows(image, mask)
    assert [w.organs[0] for w in windows] == [0, 1, 2, 3]
    # the heart lies wholly in the lung window, and is scored there too
    assert 1 in windows[0].organs and windows[0].start == windows[1].start
    assert tuple(windows[3].image.shape[2:]) == (176, 256, 352)  # the aorta's is longer

    passes: list[int] = []
    hook = scorer.model.visual_encoder.register_forward_hook(
        lambda _m, args, _o: passes.append(int(args[0].shape[0]))
    )
    try:
        batched = scorer.latents(windows)
        scorer.batch = 1
        alone = scorer.latents(windows)
    finally:
        scorer.batch = 4
        hook.remove()
    # lung and heart share one crop; the esophagus' crop of the same shape joins it in a batch
    assert passes == [2, 1, 1, 1, 1]
    # the heart: in its own window, the lung's (the same crop) and the aorta's long one
    assert set(batched) == {0, 1, 2, 3} and len(batched[1]) == 3 and 1 in windows[3].organs
    for organ, found in batched.items():
        for a, b in zip(found, alone[organ], strict=True):
            assert torch.allclose(a, b, atol=1e-5)

    probs = scorer.probabilities(batched)
    assert set(probs) == {lb for labels in ORGAN_LABELS.values() for lb in labels}
    text = scorer._text["Cardiomegaly"]
    with torch.no_grad():
        each = [float(scorer.model.logits(lat, text).softmax(-1)[1]) for lat in batched[1]]
    assert probs["Cardiomegaly"] == pytest.approx(sum(each) / len(each), abs=1e-6)


def test_without_organ_masks_only_the_lungs_are_scored(scorer: FVLMScorer) -> None:
    rng = np.random.default_rng(1)
    shape = (60, 260, 300)
    volume = _volume(rng.integers(-1000, 400, shape).astype(np.int16))
    lungs = _organs((200, 300, 360))["lung"][:60, :260, :300]
    left, right = lungs.copy(), lungs.copy()
    left[:, :, 150:] = False
    right[:, :, :150] = False
    result = scorer.analyze(Segmented(volume, {"lung_left": left, "lung_right": right}))
    assert {f.label for f in result.findings} == set(ORGAN_LABELS["lung"])
    assert result.notes[0] == LUNG_ONLY
    assert "heart, esophagus, aorta not scored" in result.notes[1]
    assert all(0.0 <= (f.score or -1) <= 1.0 for f in result.findings)

    empty = np.zeros(shape, dtype=bool)
    nothing = scorer.analyze(Segmented(volume, {"lung_left": empty, "lung_right": empty}))
    assert nothing.findings == () and "no lung voxels" in nothing.notes[-1]


def test_windows_stay_inside_a_small_volume() -> None:
    start, size = window_bounds(((2, 5, 5), (40, 100, 300)), (50, 256, 352), ROI)
    assert size == (50, 256, 352) and start == (0, 0, 0)
    start, size = window_bounds(((100, 10, 10), (110, 20, 20)), (200, 400, 400), ROI)
    assert size == ROI and start == (105 - 56, 0, 0)


def test_orientation_flipped_series_give_the_same_input() -> None:
    rng = np.random.default_rng(2)
    voxels = rng.integers(-1000, 400, (40, 270, 360)).astype(np.int16)
    labels = np.zeros(voxels.shape, dtype=np.uint8)
    labels[5:30, 40:200, 50:300] = 1
    plain = prepare(_volume(voxels), labels)
    # rows running towards the front and slices towards the feet: the same anatomy
    flipped = np.diag([1.0, -1.0, -3.0, 1.0])
    other = prepare(_volume(voxels[::-1, ::-1].copy(), flipped), labels[::-1, ::-1].copy())
    assert torch.equal(plain[1], other[1]) and torch.allclose(plain[0], other[0])


def test_nifti_round_trip_and_ras_affine() -> None:
    volume = _volume(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    data, affine = to_nifti_arrays(volume)
    assert data.shape == (4, 3, 2) and data[3, 2, 1] == volume.voxels[1, 2, 3]
    assert np.array_equal(from_nifti_labels(data), volume.voxels)
    lps = volume.affine @ [3, 2, 1, 1]
    assert np.allclose(affine @ [3, 2, 1, 1], [-lps[0], -lps[1], lps[2], 1])


def test_totalsegmentator_classes_merge_into_the_four_organs() -> None:
    pytest.importorskip(
        "totalsegmentator", reason="TotalSegmentator (the 'organs' extra) is absent"
    )
    from totalsegmentator.map_to_binary import class_map  # noqa: PLC0415 (the optional extra)

    ids = {name: i for i, name in class_map["total"].items()}
    labels = np.zeros((4, 4, 12), dtype=np.uint8)
    names = [n for organ in ORGANS for n in ORGAN_CLASSES[organ]]
    for i, name in enumerate(names):
        labels[0, 0, i] = ids[name]
    labels[1, 1, 1] = ids["pulmonary_vein"]  # not one of fVLM's organs
    masks = merge(labels, ids)
    assert [int(masks[o].sum()) for o in ORGANS] == [5, 2, 1, 1]
    assert masks["heart"][0, 0, 5] and masks["heart"][0, 0, 6] and not masks["lung"][1, 1, 1]


def test_tokenizer_pads_the_prompts_like_the_original(tmp_path: Path) -> None:
    vocab = vocab_file(tmp_path / "vocab.txt")
    ids, mask = WordPiece(vocab).encode(["Not Nodule.", "Nodule."], pad_to=16)
    assert ids.shape == (2, 16) and mask[0].tolist() == [1] * 5 + [0] * 11
    assert ids[0, 0] == 2 and ids[0, 4] == 3 and ids[1, 3] == 3
