"""``ctnode mednext train``'s core on the CPU: a tiny MedNeXt learns synthetic findings from
volumes prepared by the analyzer's own preprocessing (AUROC > 0.9 on held-out volumes), its
card and weights are registered and load as the node loads them, an interrupted training
resumes where it stopped, and the labels are read as ``ctnode fusion train`` reads them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import torch

import config
from inference.mednext.analyzer import load
from inference.mednext.card import ModelCard
from inference.mednext.checkpoint import read
from inference.mednext.model import MedNeXt, MedNeXtConfig, classifier_for
from inference.mednext.preprocess import preprocess
from inference.strict import CheckpointError
from inference.weights_store import find, read_manifest, status
from tests.mednext_synthetic import LABELS, SPACING, dataset, tiny_card
from training.labels import LabelError
from training.mednext.data import Prepared, match
from training.mednext.labels import read_multilabels
from training.mednext.loop import BEST, LATEST, TrainOptions, fit, per_label_auroc
from training.mednext.workflow import train_inputs
from training.metrics import auroc


def _inputs(n: int, seed: int, card: ModelCard) -> tuple[list[np.ndarray], np.ndarray]:
    volumes, y = dataset(n, seed)
    pre = card.preprocessing
    return [preprocess(v, SPACING, lungs, pre).numpy() for v, lungs in volumes], y


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: a tiny network on small volumes gains nothing from more, and
    loses ten times over when the cores are shared with other work (measured: 21 s against
    250 s for the learning test on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_mednext_learns_synthetic_findings_and_registers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    card = tiny_card("synthetic-mednext")
    inputs, y = _inputs(96, seed=1, card=card)
    options = TrainOptions(epochs=15, batch_size=4, learning_rate=5e-3, patience=4, seed=42)
    store = tmp_path / "weights"
    outcome = train_inputs(
        card, inputs, y, store=store, workdir=tmp_path / "work", options=options, progress=False
    )
    fitted = outcome.fit
    assert fitted.best_epoch >= 1 and len(fitted.history) <= 15
    assert all(a > 0.9 for a in fitted.auroc), fitted.auroc

    # registered as a site's model: weights verified, card beside them with its thresholds
    entry = find(read_manifest(store / "manifest.toml"), "synthetic-mednext")
    assert entry.analyzer == "mednext" and status(store, entry)[0] == "present"
    registered = ModelCard.read(store / entry.card)
    assert registered.labels == LABELS and registered.thresholds == tuple(fitted.thresholds)
    assert registered.training["validation_auroc"] == [round(a, 4) for a in fitted.auroc]
    assert registered.training["best_epoch"] == fitted.best_epoch
    assert all(0.0 < t < 1.0 for t in registered.thresholds)

    # held-out volumes, scored by the analyzer the node would load
    settings = config.load(None, {}).neural
    scorer = load(store, entry, dataclasses.replace(settings, cpu_threads=1))
    held_out, truth = _inputs(40, seed=99, card=card)
    probs = np.array([scorer.probabilities(torch.from_numpy(x)) for x in held_out])
    aurocs = per_label_auroc(truth, probs)
    assert all(a > 0.9 for a in aurocs), aurocs
    # the labels are learnt, not one "abnormal" score: each label's AUROC against another
    # label's truth is near chance
    assert abs(auroc(truth[:, 1], probs[:, 0]) - 0.5) < 0.3


def test_an_interrupted_training_resumes_where_it_stopped(tmp_path: Path) -> None:
    card = tiny_card()
    inputs, y = _inputs(8, seed=3, card=card)
    work = tmp_path / "work"
    first = fit(
        classifier_for(card),
        inputs,
        y,
        LABELS,
        TrainOptions(epochs=2, batch_size=4, seed=1),
        work,
        progress=False,
    )
    assert len(first.history) == 2 and (work / LATEST).is_file() and (work / BEST).is_file()
    latest, layout = read(work / LATEST)  # the trainer's layout: the analyzer reads it
    assert layout == "trainer" and set(latest) == set(classifier_for(card).state_dict())

    resumed = fit(
        classifier_for(card),
        inputs,
        y,
        LABELS,
        TrainOptions(epochs=3, batch_size=4, seed=1),
        work,
        resume=True,
        progress=False,
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history[:2]
    saved = torch.load(work / LATEST, weights_only=True)
    assert saved["epoch"] == 3 and saved["optimizer_state_dict"]["state"]

    with pytest.raises(ValueError, match="other labels or another split"):
        fit(
            classifier_for(tiny_card(labels=("A", "B", "C"))),
            inputs,
            y,
            ("A", "B", "C"),
            TrainOptions(epochs=4, batch_size=4, seed=1),
            work,
            resume=True,
            progress=False,
        )


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path: Path) -> None:
    card = tiny_card()
    inputs, y = _inputs(8, seed=4, card=card)
    y[:, :] = 0
    y[::2, 0] = 1
    options = TrainOptions(epochs=10, batch_size=4, seed=1, patience=1, learning_rate=1e-9)
    result = fit(classifier_for(card), inputs, y, LABELS, options, tmp_path, progress=False)
    assert result.stopped_early and len(result.history) < 10
    # labels with one class in validation have no AUROC and a neutral threshold
    assert math.isnan(result.auroc[1]) and result.thresholds[1] == 0.5


def test_multilabel_files_are_read_as_fusion_training_reads_labels(tmp_path: Path) -> None:
    ct_rate = tmp_path / "ct_rate.csv"
    ct_rate.write_text(
        "VolumeName,Lung nodule,Emphysema,Cardiomegaly\n"
        "train_1_a_1.nii.gz,1,0,1\ntrain_2_a_1.nii.gz,0,1,0\ntrain_3_a_1.nii.gz,0,0,0\n"
    )
    labels = read_multilabels(ct_rate)
    assert labels.labels == ("Lung nodule", "Emphysema", "Cardiomegaly")
    assert labels.ids == ("train_1_a_1", "train_2_a_1", "train_3_a_1")
    assert labels.y.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    chosen = read_multilabels(ct_rate, ["Cardiomegaly", "Lung nodule"])
    assert chosen.y.tolist() == [[1, 1], [0, 0], [0, 0]]
    with pytest.raises(LabelError, match="no column for 'Pneumothorax'"):
        read_multilabels(ct_rate, ["Pneumothorax"])
    bad = tmp_path / "bad.csv"
    bad.write_text("study_uid,Lung nodule\n1.2.3,1\n1.2.4,maybe\n")
    with pytest.raises(LabelError, match="line 3: 'Lung nodule' is 'maybe'"):
        read_multilabels(bad)

    prepared = [
        Prepared(("1.2.840.1", "1.2.840.1.1", "train_1_a_1"), tmp_path / "a.npy"),
        Prepared(("1.2.840.2", "1.2.840.2.1", "train_2_a_1"), tmp_path / "b.npy"),
    ]
    with pytest.raises(LabelError, match="1 of 3 labels name studies that were not prepared"):
        match(prepared, labels)
    files, y = match(prepared, labels, ignore_unknown=True)
    assert files == [tmp_path / "a.npy", tmp_path / "b.npy"]
    assert y.tolist() == [[1, 0, 1], [0, 1, 0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (CI has none)")
def test_on_cuda_training_runs_in_mixed_precision_and_scoring_matches_the_cpu(
    tmp_path: Path,
) -> None:
    card = tiny_card()
    inputs, y = _inputs(8, seed=5, card=card)
    options = TrainOptions(epochs=1, batch_size=4, seed=1, device="cuda")
    result = fit(classifier_for(card), inputs, y, LABELS, options, tmp_path, progress=False)
    assert result.device == "cuda" and len(result.history) == 1
    model = classifier_for(card).eval()
    model.load_state_dict(result.state)
    x = torch.from_numpy(np.stack(inputs))
    with torch.no_grad():
        cpu = torch.sigmoid(model(x))
        gpu = torch.sigmoid(model.cuda()(x.cuda())).cpu()
    assert float((gpu - cpu).abs().max()) < 1e-4


def test_training_can_start_from_a_segmentation_checkpoints_encoder(tmp_path: Path) -> None:
    card = tiny_card("from-segmentation")
    inputs, y = _inputs(8, seed=6, card=card)
    torch.manual_seed(11)
    segmentation = MedNeXt(MedNeXtConfig.from_architecture(card.arch, 3, deep_supervision=True))
    path = tmp_path / "model_final_checkpoint.model"
    torch.save({"epoch": 1000, "state_dict": segmentation.state_dict()}, path)
    options = TrainOptions(epochs=1, batch_size=4, seed=1, learning_rate=1e-12)
    outcome = train_inputs(
        card,
        inputs,
        y,
        store=tmp_path / "weights",
        workdir=tmp_path / "work",
        options=options,
        init=path,
        progress=False,
    )
    assert outcome.card.training["initialised_from"] == "model_final_checkpoint.model"
    trained = outcome.fit.state
    # a learning rate of 1e-12: the encoder is still the segmentation network's
    own = segmentation.state_dict()
    assert all(torch.allclose(trained[k], own[k], atol=1e-6) for k in trained if k in own)
    assert "head.weight" in trained and "up_0.conv1.weight" not in trained

    other = MedNeXt(MedNeXtConfig.variant("S", 3))
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="shape-mismatch"):
        train_inputs(
            card,
            inputs,
            y,
            store=tmp_path / "weights",
            workdir=tmp_path / "w2",
            options=options,
            init=path,
            progress=False,
        )
