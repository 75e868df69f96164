"""A generated TotalSegmentator weights folder: its "total" models' dataset folders laid out as
TotalSegmentator reads them (nnU-Net v2: ``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth``) with the models' classes and seeded random weights. The tests
use a small U-Net of our choosing (``TINY``; the real plans ship only inside the weight
archives): it lets the node's call into TotalSegmentator run for real, end to end, offline; its
masks mean nothing. ``benchmarks/totalseg.py`` passes the real models' shapes instead.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAST_TASK = 297  # the fast (3 mm) "total" model; 291-295 are the full mode's five parts


@dataclass(frozen=True)
class Network:
    """An nnU-Net PlainConvUNet configuration: widths per stage (the first stage full
    resolution, each later one downsampling by 2 on every axis, 3x3x3 kernels), convolutions
    per stage (encoder and decoder alike), the sliding-window patch and the isotropic
    spacing in mm."""

    features: tuple[int, ...]
    patch: tuple[int, int, int]
    spacing: float
    n_conv: int = 1


TINY = Network(features=(4, 8, 16), patch=(32, 32, 32), spacing=3.0)


def _arch(network: Network) -> dict[str, Any]:
    n = len(network.features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(network.features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [network.n_conv] * n,
            "n_conv_per_stage_decoder": [network.n_conv] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans(dataset: str, network: Network) -> dict[str, Any]:
    """nnU-Net v2 plans for a CT model of the given network."""
    spacing = [network.spacing] * 3
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [100, 100, 100],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(network.patch),
                "median_image_size_in_voxels": [100, 100, 100],
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resample,
                "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
                "architecture": _arch(network),
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3000.0,
                "mean": 50.0,
                "median": 40.0,
                "min": -1024.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 1500.0,
                "std": 300.0,
            }
        },
    }


def write_model(results: Path, network: Network = TINY, task_id: int = FAST_TASK) -> Path:
    """The dataset folder of "total" model ``task_id`` (297 fast, 291-295 the full mode's
    parts) under ``results`` (nnU-Net's results folder), with the trainer and classes
    TotalSegmentator's own tables give that model."""
    # the optional extra: TotalSegmentator's own tables and nnU-Net's network builder
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415
    from totalsegmentator.libs import TASK_ID_WEIGHTS_CONFIGS  # noqa: PLC0415
    from totalsegmentator.map_tasks_config import TASK_CONFIGS  # noqa: PLC0415
    from totalsegmentator.map_to_binary import (  # noqa: PLC0415
        class_map,
        class_map_5_parts,
        map_taskid_to_partname_ct,
    )

    modes = TASK_CONFIGS["total"]["sub_modes"]
    fast = task_id == modes["fast"]["task_id"]
    trainer = str(modes["fast" if fast else "default"]["trainer"])
    classes = class_map["total"] if fast else class_map_5_parts[map_taskid_to_partname_ct[task_id]]
    dataset = str(TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"])
    folder = results / dataset / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{name: i for i, name in sorted(classes.items())}}
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    p = plans(dataset, network)
    (folder / "plans.json").write_text(json.dumps(p), encoding="utf-8")
    arch = p["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(task_id)
    model = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        1,
        len(labels),
        allow_init=True,
        deep_supervision=False,
    )
    checkpoint = {
        "network_weights": model.state_dict(),
        "init_args": {"configuration": "3d_fullres", "fold": 0},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": None,
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return results / dataset


def write_archive(path: Path, **kwargs: Any) -> Path:
    """A zip of a weights folder holding the generated fast model (as a site registers it)."""
    staging = path.with_suffix(".staging")
    write_model(staging / "nnunet" / "results", **kwargs)
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(staging.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(staging).as_posix())
    return path
