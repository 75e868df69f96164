"""A generated TotalSegmentator weights folder: the fast "total" model's dataset folder laid out
as TotalSegmentator reads it (nnU-Net v2: ``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth``) with TotalSegmentator's 117 classes and seeded random weights
of a small U-Net of our choosing (its real plans ship only inside its weight archives). It lets
the node's call into TotalSegmentator run for real, end to end, offline; its masks mean nothing.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"


def _arch(features: list[int]) -> dict[str, Any]:
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": features,
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [1] * n,
            "n_conv_per_stage_decoder": [1] * (n - 1),
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


def plans(dataset: str, features: list[int], patch: list[int]) -> dict[str, Any]:
    """nnU-Net v2 plans for a 3 mm CT model of the given U-Net widths and patch."""
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": [100, 100, 100],
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": [100, 100, 100],
                "spacing": [3.0, 3.0, 3.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resample,
                "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
                "architecture": _arch(features),
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


def write_model(
    results: Path, features: list[int] | None = None, patch: list[int] | None = None
) -> Path:
    """The fast "total" model's folder under ``results`` (nnU-Net's results folder)."""
    # the optional extra: TotalSegmentator's own tables and nnU-Net's network builder
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415
    from totalsegmentator.libs import TASK_ID_WEIGHTS_CONFIGS  # noqa: PLC0415
    from totalsegmentator.map_to_binary import class_map  # noqa: PLC0415

    features = features or [4, 8, 16]
    patch = patch or [32, 32, 32]
    dataset = str(TASK_ID_WEIGHTS_CONFIGS[297]["foldername"])
    folder = results / dataset / f"{TRAINER}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{name: i for i, name in sorted(class_map["total"].items())}}
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    p = plans(dataset, features, patch)
    (folder / "plans.json").write_text(json.dumps(p), encoding="utf-8")
    arch = p["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    network = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        1,
        len(labels),
        allow_init=True,
        deep_supervision=False,
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        "init_args": {"configuration": "3d_fullres", "fold": 0},
        "trainer_name": TRAINER,
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
