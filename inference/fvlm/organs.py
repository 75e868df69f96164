"""Organ masks for fVLM from TotalSegmentator, with weights from the store, never downloaded.

fVLM was trained on TotalSegmentator v2 "total" masks merged into four organs (fVLM.md,
"Masks"): the five lung lobes; heart and left atrial appendage; esophagus; aorta. Here
TotalSegmentator (the ``organs`` extra) runs on the node's volume with its weights registered in
the weights store (analyzer ``totalsegmentator``: a zip of its ``nnunet/results`` folder, the
``Dataset29x_...`` folders), unpacked once beside the archive. The node points TotalSegmentator
at that copy (``TOTALSEG_WEIGHTS_PATH``), gives it a home of its own with usage statistics off
(``TOTALSEG_HOME_DIR``), and refuses to run a mode whose dataset folders are not all there:
TotalSegmentator downloads a missing model, and the node must never do that.

The ``totalsegmentator`` package (and nibabel) are imported only here, when its weights are
registered: without them fVLM runs on the node's own lung mask (``inference.fvlm.scoring``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from inference.volume import Volume

log = logging.getLogger(__name__)

ANALYZER = "totalsegmentator"
# TotalSegmentator v2 "total" classes merged into fVLM's organs (fVLM.md, "Masks").
ORGAN_CLASSES: dict[str, tuple[str, ...]] = {
    "lung": (
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ),
    "heart": ("heart", "atrial_appendage_left"),
    "esophagus": ("esophagus",),
    "aorta": ("aorta",),
}
# RAS (NIfTI) from LPS (DICOM) patient coordinates.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class OrgansError(ValueError):
    """TotalSegmentator cannot run here; the message says what the site must do."""


def merge(
    labels: npt.NDArray[np.integer], class_ids: Mapping[str, int]
) -> dict[str, npt.NDArray[np.bool_]]:
    """fVLM's four organ masks from a TotalSegmentator "total" label volume, given its class
    ids by name (``totalsegmentator.map_to_binary.class_map["total"]`` inverted)."""
    return {
        organ: np.isin(labels, [class_ids[name] for name in names])
        for organ, names in ORGAN_CLASSES.items()
    }


def to_nifti_arrays(volume: Volume) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]]:
    """The volume as NIfTI wants it: data (x, y, z) and a RAS affine of those indices."""
    data = np.ascontiguousarray(np.asarray(volume.voxels).transpose(2, 1, 0)).astype(np.int16)
    return data, _LPS_TO_RAS @ volume.affine


def from_nifti_labels(data: npt.NDArray[np.integer]) -> npt.NDArray[np.integer]:
    """A label volume TotalSegmentator returned on the input grid, back to (z, y, x)."""
    return np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0))


def required_folders(fast: bool) -> list[str]:
    """The dataset folders TotalSegmentator's "total" task reads in this mode (291-295 full,
    297 fast), by the names its own weight table gives them."""
    # the optional heavy dependency: imported only when TotalSegmentator weights are registered
    from totalsegmentator.libs import TASK_ID_WEIGHTS_CONFIGS  # noqa: PLC0415
    from totalsegmentator.map_tasks_config import TASK_CONFIGS  # noqa: PLC0415

    mode = TASK_CONFIGS["total"]["sub_modes"]["fast" if fast else "default"]
    ids = mode["task_id"] if isinstance(mode["task_id"], list) else [mode["task_id"]]
    return [str(TASK_ID_WEIGHTS_CONFIGS[i]["foldername"]) for i in ids]


def unpack(archive: Path, sha256: str) -> Path:
    """The weights folder unpacked from ``archive`` beside it, once per archive hash (an
    interrupted unpack is redone: the folder is renamed into place only when complete)."""
    target = archive.with_name(f"{archive.stem}.unpacked-{sha256[:16]}")
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                path = Path(name)
                if path.is_absolute() or ".." in path.parts:
                    raise OrgansError(f"{archive.name}: unsafe member {name!r}")
            zf.extractall(partial)
    except zipfile.BadZipFile as exc:
        raise OrgansError(
            f"{archive.name} is not a zip of TotalSegmentator's weights: {exc}"
        ) from exc
    partial.rename(target)
    return target


def weights_root(unpacked: Path, fast: bool) -> Path:
    """The folder holding the mode's ``Dataset29x_...`` folders (the archive's top level or
    one folder down, e.g. ``nnunet/results``); ``OrgansError`` naming the missing ones."""
    wanted = required_folders(fast)
    candidates = [unpacked, *(p for p in unpacked.rglob("*") if p.is_dir())]
    for root in candidates:
        if all((root / name).is_dir() for name in wanted):
            return root
    mode = "fast" if fast else "full"
    raise OrgansError(
        f"the registered TotalSegmentator weights lack the {mode} mode's "
        f"{', '.join(wanted)}: register a zip holding them (it is never downloaded)"
    )


def point_at(root: Path, home: Path) -> None:
    """Point TotalSegmentator at the store's weights and a home with statistics off."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.json"
    settings = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    settings.update(
        {
            "totalseg_id": "ctnode",
            "send_usage_stats": False,
            "statistics_disclaimer_shown": True,
            "prediction_counter": 0,
        }
    )
    config.write_text(json.dumps(settings), encoding="utf-8")
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(root)
    os.environ["TOTALSEG_HOME_DIR"] = str(home)


@dataclass
class OrganSegmenter:
    """TotalSegmentator's "total" task on a volume, merged into fVLM's organs on its grid.

    ``root`` holds the mode's dataset folders; ``device`` is ``gpu`` or ``cpu`` as
    TotalSegmentator names them. One volume at a time (it is memory-hungry)."""

    root: Path
    fast: bool
    device: str = "cpu"
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def mode(self) -> str:
        return "TotalSegmentator total " + ("fast (3 mm)" if self.fast else "full (1.5 mm)")

    def check(self) -> None:
        """Every dataset folder of the mode is there (TotalSegmentator would download a
        missing one) and the stack it runs on imports (nnU-Net, its networks, timm,
        torchvision); ``OrgansError`` saying what is wrong otherwise."""
        for name in required_folders(self.fast):
            if not (self.root / name).is_dir():
                raise OrgansError(f"TotalSegmentator weights {name} are not in {self.root}")
        try:
            # the optional heavy dependency, imported only where it runs; a broken install
            # (say a torchvision built for another torch) raises more than ImportError
            import timm  # noqa: PLC0415, F401  (nnU-Net imports every trainer: some need it)
            import totalsegmentator.python_api  # noqa: PLC0415, F401
        except ImportError:
            raise
        except Exception as exc:
            raise OrgansError(
                f"TotalSegmentator cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc

    def segment(self, volume: Volume) -> dict[str, npt.NDArray[np.bool_]]:
        """The four organ masks of ``volume`` (z, y, x)."""
        # the optional heavy dependency, imported only where it runs
        import nibabel as nib  # noqa: PLC0415
        from totalsegmentator.map_to_binary import class_map  # noqa: PLC0415
        from totalsegmentator.python_api import totalsegmentator  # noqa: PLC0415

        self.check()
        data, affine = to_nifti_arrays(volume)
        image = nib.Nifti1Image(data, affine)
        with self._lock:
            threads = torch.get_num_threads()  # it takes every core of the machine
            try:
                out = totalsegmentator(
                    image,
                    None,
                    ml=True,
                    fast=self.fast,
                    task="total",
                    quiet=True,
                    skip_saving=True,
                    device=self.device,
                )
            finally:
                torch.set_num_threads(threads)
        labels = from_nifti_labels(np.asarray(out.dataobj))
        ids = {name: i for i, name in class_map["total"].items()}
        return merge(labels, ids)
