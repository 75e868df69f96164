"""CT-CLIP in the node's ensemble: registered weights load once, score every analysed series,
and show up in the features, the legacy JSON, the SR, the summary page and ``/health``;
weights that cannot run disable their analyzer with the reason and leave the rest serving."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch (the 'neural' extra) is not installed")

import numpy as np
import pydicom
import torch

from inference import ensemble
from inference import weights_store as weights
from inference.ctclip.analyzer import load
from inference.ctclip.checkpoint import load_checkpoint
from inference.ctclip.model import CTCLIP, ClassFine, CTCLIPConfig
from inference.ctclip.preprocess import preprocess
from inference.ctclip.results import FEATURE_SETS, feature_name, to_result
from inference.ctclip.scoring import CTCLIPScorer, text_cache_path
from inference.findings import CT_RATE_LABELS, AnalyzerResult
from inference.fusion.rules import RuleBasedFusion
from inference.loading import load_series
from inference.volume import Volume
from inference.weights_store import find, read_manifest
from reporting import write_outputs
from reporting.render import neural_lines, not_run_line
from tests.conftest import REPO, ctnode_command, subprocess_env
from tests.ctclip_store import TINY, make_store, tiny_state, vocab_file
from tests.http_node import make_node
from tests.neural_node import settings_for, sr_texts, weights_cli
from tests.phantoms import chest_phantom
from tests.test_predict import get, post, zip_files
from tests.test_sr import dciodvfy
from training.extract import Unit, extract


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return chest_phantom(tmp_path_factory.mktemp("ct"), "ctclip", lesion_mm=25.0)


@pytest.fixture(scope="module")
def volume(files: list[Path]) -> Volume:
    return load_series(files)


def _states(built: ensemble.Ensemble) -> dict[str, tuple[bool, str]]:
    return {s.name: (s.enabled, s.reason) for s in built.states}


def test_registered_checkpoints_join_the_ensemble(store: Path, volume: Volume) -> None:
    built = ensemble.build(settings_for(store))
    assert built.names == ("quantitative", "ctclip", "ctclip-supervised")
    states = _states(built)
    assert states["ctclip"][0] and "tiny-ct-clip" in states["ctclip"][1]
    assert states["ctclip-supervised"][0]
    assert not states["fvlm"][0] and "no weights registered" in states["fvlm"][1]
    entry_sha = built.neural[0].weights_sha256[0]
    assert text_cache_path(store / "CT-CLIP_tiny.pt", entry_sha).is_file()

    analysis = built.run(volume, sharp_kernel=False)
    by_name = {r.analyzer: r for r in analysis.results}
    assert list(by_name) == ["quantitative", "ctclip", "ctclip-supervised"]
    zero_shot = by_name["ctclip"]
    assert [f.label for f in zero_shot.findings] == list(CT_RATE_LABELS)
    assert tuple(zero_shot.features) == FEATURE_SETS["ctclip"].names
    assert zero_shot.weights_sha256 == (entry_sha,)

    # the numbers are the model's: the same checkpoint run by hand gives them
    model = load_checkpoint(store / "CT-CLIP_tiny.pt", CTCLIPConfig.from_json(TINY))
    assert isinstance(model, CTCLIP)
    latents = torch.load(text_cache_path(store / "CT-CLIP_tiny.pt", entry_sha))["latents"]
    with torch.no_grad():
        image = model.image_latents(preprocess(volume, (40, 80, 80))[None])
        logits = model.logits(latents, image)[:, 0].reshape(18, 2)
    expected = logits.softmax(-1)[:, 0].tolist()
    got = [f.score or 0.0 for f in zero_shot.findings]
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(got) - min(got) > 1e-3  # the labels are told apart, not one constant

    # the node's schema covers all three, and nothing is NaN for a series they all scored
    schema = built.feature_schema()
    assert schema.version == "quantitative-2+ctclip-1+ctclip-supervised-1"
    row = schema.vector(analysis.results)
    names = schema.names
    neural = [i for i, n in enumerate(names) if n.startswith("ctclip")]
    assert len(neural) == 36 and not np.isnan(row[neural]).any()
    assert ensemble.planned_schema(settings_for(store)).names == names


def test_rule_based_fusion_reads_only_the_analyzers_it_is_told_to(
    store: Path, volume: Volume
) -> None:
    built = ensemble.build(settings_for(store))
    default = built.run(volume, sharp_kernel=False, fusion=RuleBasedFusion(0.5))
    quant_only = RuleBasedFusion(0.5).fuse(default.results[:1])
    assert default.fusion == quant_only
    supervised = default.results[2]
    top = max(f.score or 0.0 for f in supervised.findings)
    wider = RuleBasedFusion(0.5, ("quantitative", "ctclip-supervised")).fuse(default.results)
    assert wider.probability_of_pathology == pytest.approx(
        max(top, quant_only.probability_of_pathology), abs=1e-4
    )


def test_outputs_carry_the_ctclip_results(
    store: Path, files: list[Path], volume: Volume, tmp_path: Path
) -> None:
    built = ensemble.build(settings_for(store))
    analysis = built.run(volume, sharp_kernel=False)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    out = write_outputs(analysis, volume, sources, tmp_path / "out")
    result = json.loads(out.json.read_text())
    probabilities = result["ctclip_probabilities"]
    assert list(probabilities) == list(CT_RATE_LABELS)
    zero_shot = analysis.results[1]
    assert probabilities["Lung nodule"] == zero_shot.findings[9].score
    assert set(result["ctclip_supervised_probabilities"]) == set(CT_RATE_LABELS)
    not_run = {a["analyzer"]: a["reason"] for a in result["analyzers_not_run"]}
    assert set(not_run) == {"diffusion-anomaly", "fvlm", "mednext"}
    analyzers = {a["analyzer"]: a for a in result["analyzers"]}
    assert analyzers["ctclip"]["features"][feature_name("ctclip", "Emphysema")] == pytest.approx(
        zero_shot.findings[7].score
    )

    values = sr_texts(out.sr)
    # the neural scores are text in the report's Qualitative Evaluations (no image shows
    # them), each with the model that gave it; each label is also present or absent (CODE)
    nodule = zero_shot.findings[9]
    assert (
        f"Lung nodule: {nodule.score:.2f} (score, not calibrated, present at 0.5; "
        f"ctclip {zero_shot.version})"
    ) in values
    emphysema = analysis.results[2].findings[7]
    assert any(v.startswith(f"Emphysema: {emphysema.score:.2f} (") for v in values)
    assert "fvlm: no weights registered in the manifest" in values
    assert "60046008" in values  # Pleural effusion, coded in SNOMED CT
    problems = dciodvfy(out.sr)
    if problems is not None:
        assert problems == [], problems


def test_weights_that_cannot_run_disable_their_analyzer_only(tmp_path: Path) -> None:
    store = make_store(tmp_path / "weights", vocab=False)
    built = ensemble.build(settings_for(store))
    states = {s.name: s for s in built.states}
    assert not states["ctclip"].enabled and states["ctclip"].fault
    assert (
        "vocab" in states["ctclip"].reason and "ctnode weights register" in states["ctclip"].reason
    )
    assert states["ctclip-supervised"].enabled
    assert built.names == ("quantitative", "ctclip-supervised")

    # a base checkpoint registered for the supervised analyzer is refused by name
    weights.register(
        store,
        store / "CT-CLIP_tiny.pt",
        name="tiny-ct-lipro",
        analyzer="ctclip-supervised",
        architecture=store / "tiny-ctclip.json",
    )
    states = {s.name: s for s in ensemble.build(settings_for(store)).states}
    assert not states["ctclip-supervised"].enabled
    assert "wrong-kind" in states["ctclip-supervised"].reason

    # a name in [neural] models that is not registered is a fault, not a silent fallback
    settings = settings_for(store)
    settings = dataclasses.replace(
        settings, neural=dataclasses.replace(settings.neural, models=("ct-clip-v3",))
    )
    states = {s.name: s for s in ensemble.build(settings).states}
    assert states["ctclip"].fault and "ct-clip-v3" in states["ctclip"].reason


class _Broken:
    """A neural analyzer that fails on every volume (e.g. a GPU out of memory)."""

    name = "ctclip"
    version = "broken"
    weights_sha256: tuple[str, ...] = ()

    def analyze(self, volume: Volume) -> AnalyzerResult:
        raise RuntimeError("CUDA out of memory")


def test_a_failing_neural_analyzer_does_not_fail_the_study(volume: Volume) -> None:
    analysis = ensemble.Ensemble((_Broken(),)).run(volume, sharp_kernel=False)
    assert [r.analyzer for r in analysis.results] == ["quantitative"]
    assert analysis.not_run == (
        ("ctclip", "failed on this series: RuntimeError: CUDA out of memory"),
    )
    values = ensemble.Ensemble((_Broken(),)).feature_schema().values(analysis.results)
    assert np.isnan(values[feature_name("ctclip", "Lung nodule")])


def test_ctnode_analyze_runs_the_registered_models(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "study"
    chest_phantom(folder, "cli", lesion_mm=20.0)
    done = subprocess.run(
        ctnode_command("analyze", str(folder), "--json", str(tmp_path / "r.json")),
        cwd=REPO,
        env=subprocess_env(CTNODE_NEURAL__WEIGHTS_DIR=str(store)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["ctclip_probabilities"]) == set(CT_RATE_LABELS)
    assert "ctclip" in {f["analyzer"] for f in result["decision"]["findings"]}


def test_the_node_runs_ctclip_on_an_upload_and_reports_it_healthy(
    store: Path, files: list[Path], tmp_path: Path
) -> None:
    node = make_node(tmp_path, neural={"weights_dir": str(store)})
    try:
        status, health = get(node, "/health")
        body = json.loads(health)
        assert status == 200, body
        assert body["analyzers"]["ctclip"]["enabled"] is True
        assert body["analyzers"]["ctclip-supervised"]["enabled"] is True
        assert body["analyzers"]["mednext"] == {
            "enabled": False,
            "reason": "no weights registered in the manifest",
        }
        status, result = post(node, zip_files(files))
        assert status == 200, result
        assert set(result["ctclip_probabilities"]) == set(CT_RATE_LABELS)
        analyzers = [a["analyzer"] for a in result["analyzers"]]
        assert analyzers == ["quantitative", "ctclip", "ctclip-supervised"]
        sha = {a["analyzer"]: a["weights_sha256"] for a in result["analyzers"]}
        assert sha["ctclip"] == [node_entry_sha(store, "tiny-ct-clip")]
    finally:
        node.stop()


def node_entry_sha(store: Path, name: str) -> str:
    return find(read_manifest(store / "manifest.toml"), name).sha256


def test_a_site_registers_and_checks_a_checkpoint_it_obtained(tmp_path: Path) -> None:
    obtained = tmp_path / "download"
    obtained.mkdir()
    torch.save(tiny_state(seed=3), obtained / "CT-CLIP_v2.pt")
    (obtained / "arch.json").write_text(json.dumps(TINY))
    vocab_file(obtained / "vocab.txt")
    store = tmp_path / "weights"

    registered = weights_cli(
        store,
        "register",
        str(obtained / "CT-CLIP_v2.pt"),
        "--name",
        "ct-clip-v2",
        "--analyzer",
        "ctclip",
        "--licence",
        "CC BY-NC-SA 4.0",
        "--architecture",
        str(obtained / "arch.json"),
        "--vocab",
        str(obtained / "vocab.txt"),
    )
    assert registered.returncode == 0, registered.stderr
    sha = hashlib.sha256((obtained / "CT-CLIP_v2.pt").read_bytes()).hexdigest()
    assert node_entry_sha(store, "ct-clip-v2") == sha
    listed = weights_cli(store, "list")
    assert listed.returncode == 0 and "ct-clip-v2\t1\tpresent\tctclip" in listed.stdout
    checked = weights_cli(store, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ctclip\tenabled\tweights verified (ct-clip-v2)" in checked.stdout
    assert text_cache_path(store / "CT-CLIP_v2.pt", sha).is_file()

    (store / "CT-CLIP_v2.pt").write_bytes(b"truncated")
    checked = weights_cli(store, "check")
    assert checked.returncode == 1 and "ctclip\tFAULT" in checked.stdout


def test_the_summary_page_names_what_stands_out_and_what_did_not_run(volume: Volume) -> None:
    probs = [0.1] * 18
    probs[15], probs[12] = 0.93, 0.71  # Consolidation, Pleural effusion
    quant = ensemble.Ensemble().run(volume, sharp_kernel=False)
    analysis = dataclasses.replace(
        quant,
        results=(*quant.results, to_result(probs, "ctclip", "v")),
        not_run=(("fvlm", "no weights registered"), ("mednext", "no weights registered")),
    )
    (line,) = neural_lines(analysis)
    assert line == ("CT-CLIP zero-shot (not calibrated): Consolidation 0.93, Pleural effusion 0.71")
    assert not_run_line(analysis) == "Not run: fvlm, mednext (no weights registered)"
    many = dataclasses.replace(analysis, results=(to_result([0.9] * 18, "ctclip", "v"),))
    (crowded,) = neural_lines(many)
    assert len(crowded) <= 108 and crowded.endswith("more")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (CI has none)")
def test_on_cuda_bf16_stays_within_1e_2_of_the_cpu(store: Path, volume: Volume) -> None:
    entry = find(read_manifest(store / "manifest.toml"), "tiny-ct-clip")
    x = preprocess(volume, (40, 80, 80))
    model = load_checkpoint(store / "CT-CLIP_tiny.pt", CTCLIPConfig.from_json(TINY))
    assert isinstance(model, CTCLIP)
    latents = torch.load(text_cache_path(store / "CT-CLIP_tiny.pt", entry.sha256))["latents"]
    with torch.no_grad():
        image = model.image_latents(x[None])
        cpu = model.logits(latents, image)[:, 0].reshape(18, 2).softmax(-1)[:, 0]
    settings = dataclasses.replace(settings_for(store).neural, bf16_autocast=True)
    on_gpu = load(store, entry, settings)
    assert on_gpu.device.type == "cuda" and on_gpu.autocast_bf16
    gpu = on_gpu.probabilities_from_input(preprocess(volume, (40, 80, 80), on_gpu.device))
    assert float((gpu - cpu).abs().max()) < 1e-2


@pytest.mark.parametrize("frozen", [True, False])
def test_a_classfine_head_on_the_same_encoder_shares_its_pass(
    frozen: bool, volume: Volume, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "weights", frozen_encoder=frozen)
    built = ensemble.build(settings_for(store))
    zero_shot, supervised = built.neural
    assert isinstance(zero_shot, CTCLIPScorer) and isinstance(supervised, CTCLIPScorer)
    assert (supervised.encoder is zero_shot) is frozen
    assert (supervised.base is zero_shot.base) is frozen
    analysis = built.run(volume, sharp_kernel=False)
    got = [f.score for f in analysis.results[2].findings]

    lipro = load_checkpoint(store / "CT_LiPro_tiny.pt", CTCLIPConfig.from_json(TINY))
    assert isinstance(lipro, ClassFine)
    with torch.no_grad():
        expected = lipro.probabilities(preprocess(volume, (40, 80, 80))[None])[0].tolist()
    assert got == pytest.approx(expected, abs=1e-5)


def test_feature_extraction_with_ctclip_caches_each_analyzer(store: Path, tmp_path: Path) -> None:
    chest_phantom(tmp_path / "a", "features-a", lesion_mm=25.0)
    chest_phantom(tmp_path / "b", "features-b")
    units = [Unit("a", path=tmp_path / "a"), Unit("b", path=tmp_path / "b")]
    table, summary = extract(units, settings_for(store), cache_dir=tmp_path / "cache", jobs=2)
    assert summary.analysed == 2
    assert table.schema.version == "quantitative-2+ctclip-1+ctclip-supervised-1"
    column = table.schema.names.index(feature_name("ctclip-supervised", "Consolidation"))
    assert not np.isnan(table.values[:, column]).any()
    assert len(list((tmp_path / "cache").glob("*.json"))) == 6  # 2 series x 3 analyzers
    again, summary = extract(units, settings_for(store), cache_dir=tmp_path / "cache")
    assert summary.cached == 2
    assert np.array_equal(again.values, table.values, equal_nan=True)
