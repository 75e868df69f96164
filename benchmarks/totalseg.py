"""TotalSegmentator's cost on the 248-slice CT, fast and full mode, as the node runs it for fVLM.

Weights of the real networks' shapes with seeded random values (the cost does not depend on
them), laid out as TotalSegmentator reads them (``tests/totalseg_weights.py``), generated once
in this process; each case then runs in a child process: the volume is loaded, the node's
quantitative analysis runs on it (the reference row, what the node always runs), then
TotalSegmentator runs on it through the node's own boundary (``inference.fvlm.organs``), on the
CPU. Peak memory: the child's own peak RSS, and the peak PSS of its process tree sampled every
100 ms (TotalSegmentator's nnU-Net starts worker processes for preprocessing and export).

Cases: ``fast`` (the 3 mm model, 297), ``full`` (the five 1.5 mm models, 291-295, one after
the other on one resampled volume), and ``full-part``: one of the five through
TotalSegmentator's own multi-model path (``nnUNet_predict_image`` with ``[291]``), whose time
times five bounds the full mode from above (the parts share the architecture and differ only in
their output classes, 19-27; the resampling, counted five times, is shared in the real run).

Needs TotalSegmentator, which does not import beside this repository's CPU torch (see the
README): run it from a venv with PyPI's torch and torchvision, e.g.
``/work/tsvenv/bin/python benchmarks/totalseg.py --cases fast full-part``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REAL_CTS, REPO, process_tree
from inference.fvlm.organs import OrganSegmenter, point_at, to_nifti_arrays
from inference.loading import load_series
from inference.quant import analyzer as quantitative
from tests.totalseg_weights import FAST_TASK, Network, write_model

SERIES = REAL_CTS["chest CT 248 (JPEG lossless)"]
FULL_TASKS = (291, 292, 293, 294, 295)
CASES = ("fast", "full", "full-part")

# The real networks. TotalSegmentator's plans.json files ship only inside its weight archives
# (github.com/wasserth/TotalSegmentator releases v2.0.0-weights), which this machine cannot
# fetch; these shapes are taken from public sources, each named:
# - Network class and trainers: nnU-Net v2 "3d_fullres" PlainConvUNet (TotalSegmentator
#   README "nnU-Net"; totalsegmentator/map_tasks_config.py, "total": fast = task 297,
#   resample 3.0, nnUNetTrainer_4000epochs_NoMirroring; default = tasks 291-295, resample 1.5,
#   nnUNetTrainerNoMirroring), 117 classes (map_to_binary.class_map["total"]) and 24/26/18/23/26
#   in the five parts (class_map_5_parts).
# - Fast model (Dataset297_TotalSegmentator_total_3mm_1559subj): patch [112, 112, 128] at
#   3.0 mm, stated in three independent places: github.com/msahamed/total_segmentaor_optimization
#   docs/fast_model_pipeline.md ("Patch Size: [112, 112, 128]", "PlainConvUNet"); the
#   benchmark script of the Tucker-decomposition study of this model (tuckercnn; Weber, Dexl
#   et al., arXiv 2404.09683: patch_size (1, 112, 112, 128) for the folder
#   Dataset297_.../nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres); and
#   medfilm-ai.pages.dev custom_ops_totalseg/sliding.html ("patch D (112)" for task 297).
#   Widths 32 doubling to a cap of 320, two convolutions per stage in encoder and decoder,
#   five stages, strides [1,2,2,2,2], 3x3x3 kernels: third-party only - a Rust reader of
#   TotalSegmentator's plans files (found by the code search, its repository not named there)
#   tests its pre-2.2-format parser, the format "every TotalSegmentator model released up to
#   v2.5" uses by its comment, on exactly these values with that patch and 3 mm spacing
#   (UNet_base_num_features 32, unet_max_num_features 320, n_conv_per_stage_encoder [2]*5,
#   pool_op_kernel_sizes [[1,1,1]]+[[2,2,2]]*4); nnU-Net's own planner (nnunetv2
#   experiment_planning network_topology.get_pool_and_conv_props at 3 mm, minimum bottleneck
#   edge 4) derives the same strides and kernels from that patch, and 32..320 with two
#   convolutions per stage are nnU-Net's defaults.
# - Full models (Datasets 291-295, 1.5 mm): NOT FOUND in any public source reachable here. The
#   patch [128, 128, 128] is ESTIMATED: nnU-Net's default planner's usual 3d_fullres patch for
#   large isotropic CT; from it the planner derives six stages, strides [1,2,2,2,2,2], 3x3x3
#   kernels; widths 32..320 and two convolutions per stage are nnU-Net's defaults (as above).
FAST = Network(features=(32, 64, 128, 256, 320), patch=(112, 112, 128), spacing=3.0, n_conv=2)
FULL = Network(features=(32, 64, 128, 256, 320, 320), patch=(128, 128, 128), spacing=1.5, n_conv=2)


class TreePss:
    """The largest proportional set size (PSS: resident pages, each shared page split among
    the processes sharing it) of a process and its descendants, summed, sampled. Summing RSS
    instead would count the pages forked workers share with their parent once per worker."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid, self.every_s, self.peak_mb = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pss_mb(self) -> float:
        total = 0
        for pid in process_tree(self.pid):
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass  # exited between listing and reading
        return total / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._pss_mb())
            self._stop.wait(self.every_s)

    def __enter__(self) -> TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def generate(results: Path, cases: list[str]) -> None:
    """The dataset folders the cases read, under nnU-Net's results folder ``results``."""
    if "fast" in cases:
        write_model(results, FAST, FAST_TASK)
    tasks = FULL_TASKS if "full" in cases else FULL_TASKS[:1] if "full-part" in cases else ()
    for task in tasks:
        write_model(results, FULL, task)


def run_part(volume: Any, task: int) -> tuple[int, ...]:
    """One full-mode model through TotalSegmentator's own multi-model path, as its
    ``totalsegmentator()`` calls it for the "total" task (resampled to 1.5 mm and back)."""
    # TotalSegmentator's stack, imported only where it runs (it imports in its own venv only)
    import nibabel as nib
    from totalsegmentator.config import setup_nnunet
    from totalsegmentator.map_tasks_config import TASK_CONFIGS

    setup_nnunet()  # nnU-Net reads its results folder when first imported: before that
    from totalsegmentator.nnunet import nnUNet_predict_image

    mode = TASK_CONFIGS["total"]["sub_modes"]["default"]
    data, affine = to_nifti_arrays(volume)
    seg, _, _ = nnUNet_predict_image(
        nib.Nifti1Image(data, affine),
        None,
        [task],
        model="3d_fullres",
        folds=[0],
        trainer=mode["trainer"],
        tta=False,
        multilabel_image=True,
        resample=mode["resample"],
        task_name="total",
        nr_threads_resampling=1,
        nr_threads_saving=6,
        quiet=True,
        skip_saving=True,
        device="cpu",
    )
    return tuple(seg.shape)


def child(case: str, results: Path, threads: int) -> dict[str, Any]:
    """One case in this process: the reference, then TotalSegmentator, timed, with memory."""
    import torch  # the child's own: its import counts in its peak memory

    torch.set_num_threads(threads)
    paths = sorted(p for p in SERIES.rglob("*") if p.is_file() and not p.name.startswith("."))
    t0 = time.perf_counter()
    volume = load_series(paths)
    times = {"load_series": time.perf_counter() - t0}
    t0 = time.perf_counter()
    quantitative.QuantitativeAnalyzer(sharp_kernel=False).analyze(volume)
    times["quantitative analysis (reference)"] = time.perf_counter() - t0
    rss_reference = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    point_at(results, results.parent.parent / "home")  # in the parent's temporary folder
    load_before = os.getloadavg()
    with TreePss(os.getpid()) as pss:
        t0 = time.perf_counter()
        if case == "full-part":
            shape = run_part(volume, FULL_TASKS[0])
        else:
            masks = OrganSegmenter(results, fast=case == "fast", device="cpu").segment(volume)
            shape = masks["lung"].shape
        times[f"TotalSegmentator {case}"] = time.perf_counter() - t0
    return {
        "times": times,
        "rss_reference_mb": rss_reference,
        "peak_tree_pss_mb": pss.peak_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "shape": list(shape),
        "volume": list(volume.shape),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def importable() -> str | None:
    """None where TotalSegmentator imports in this interpreter, else why not."""
    try:
        # the optional heavy stack: a broken install raises more than ImportError
        import timm  # noqa: F401  (nnU-Net's trainer lookup imports it)
        import totalsegmentator.python_api  # noqa: F401
    except Exception as exc:  # any failure to import means: not here
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["fast", "full"])
    parser.add_argument("--child", choices=CASES)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.results, args.threads)))
        return 0
    if not SERIES.is_dir():
        print(f"skipped: {SERIES} is absent")
        return 0
    why = importable()
    if why:
        print(f"skipped: TotalSegmentator does not import here ({why}); see the README")
        return 0
    with tempfile.TemporaryDirectory(prefix="totalseg-weights-") as tmp:
        results = Path(tmp) / "nnunet" / "results"
        generate(results, args.cases)
        threads = ["--threads", str(args.threads)]
        for case in args.cases:
            done = subprocess.run(
                [sys.executable, __file__, "--child", case, "--results", str(results), *threads],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            out = json.loads(done.stdout.strip().splitlines()[-1])
            report(case, out)
    return 0


def report(case: str, out: dict[str, Any]) -> None:
    times = out["times"]
    ref = times["quantitative analysis (reference)"]
    load = "/".join(f"{x:.1f}" for x in out["load_before"])
    load_after = "/".join(f"{x:.1f}" for x in out["load_after"])
    print(
        f"\n{case}: CPU, torch {out['torch']} ({out['torch_threads']} threads, "
        f"{out['cpu_count']} cores); volume {out['volume']}; load average {load} before, "
        f"{load_after} after"
    )
    print(f"{'step':<42}{'s':>9}{'ratio':>8}")
    for label, secs in times.items():
        print(f"{label:<42}{secs:>9.1f}{secs / ref:>8.2f}")
    if case == "full-part":
        secs = times["TotalSegmentator full-part"]
        label = "full mode, estimated (part x 5, bound)"
        print(f"{label:<42}{5 * secs:>9.1f}{5 * secs / ref:>8.2f}")
    before, peak, tree = out["rss_reference_mb"], out["peak_rss_mb"], out["peak_tree_pss_mb"]
    print(
        f"peak RSS with the volume and the reference: {before:.0f} MB; with TotalSegmentator: "
        f"{peak:.0f} MB (ratio {peak / before:.2f}); its worker processes included "
        f"(PSS): {tree:.0f} MB (ratio {tree / before:.2f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
