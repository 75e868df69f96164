"""Series files -> ``Volume`` in Hounsfield units.

Two passes: headers first (cheap, no pixels) to validate and order the planes
(``inference.validation``), then pixel decoding straight into a pre-allocated volume, one
file per task on a thread pool (the JPEG/JPEG 2000/JPEG-LS/RLE decoders are C extensions).
Peak memory is the volume plus one decoded file per thread (a whole multi-frame object for
Enhanced CT, which is then the volume's size again).

Voxels are int16 when slope and intercept are integers (the usual CT case: exact), float32
otherwise. Padding (PixelPaddingValue) and anything below -1024 HU become -1024 HU (air):
values outside the scan field of view (-2000, -3024) are not tissue.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import dcmread

from config import ValidationSettings
from inference import errors
from inference.errors import InvalidSeries
from inference.headers import SliceHeader, read_headers
from inference.validation import OrderedSeries, check
from inference.volume import SliceRef, Volume

AIR_HU = -1024

NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}

# Retired JPEG processes that no maintained decoder plugin supports.
RETIRED_SYNTAXES = {
    "1.2.840.10008.1.2.4.52",
    "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.54",
    "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.56",
    "1.2.840.10008.1.2.4.58",
    "1.2.840.10008.1.2.4.59",
    "1.2.840.10008.1.2.4.60",
    "1.2.840.10008.1.2.4.61",
    "1.2.840.10008.1.2.4.62",
    "1.2.840.10008.1.2.4.63",
    "1.2.840.10008.1.2.4.64",
    "1.2.840.10008.1.2.4.65",
    "1.2.840.10008.1.2.4.66",
}


def default_threads() -> int:
    return min(4, os.cpu_count() or 1)


def load_series(
    paths: Sequence[str | Path],
    *,
    rules: ValidationSettings = ValidationSettings(),
    threads: int | None = None,
) -> Volume:
    """Validate and load one series from its files (raises ``InvalidSeries``)."""
    headers = [h for p in paths for h in read_headers(Path(p))]
    series = {h.series_uid for h in headers}
    if len(series) > 1:
        raise InvalidSeries(
            errors.INCONSISTENT_GEOMETRY, f"files of {len(series)} different series given as one"
        )
    return load_ordered(check(headers, rules, pixel_digest), threads=threads)


def load_ordered(ordered: OrderedSeries, *, threads: int | None = None) -> Volume:
    """Decode the validated planes of ``ordered`` into a Volume."""
    planes = ordered.slices
    first = planes[0]
    unsupported = {h.transfer_syntax for h in planes} & RETIRED_SYNTAXES
    if unsupported:
        raise InvalidSeries(
            errors.UNSUPPORTED_TRANSFER_SYNTAX,
            f"transfer syntax {sorted(unsupported)[0]} (a retired JPEG process) cannot be decoded",
        )
    exact = all(
        float(h.rescale_slope).is_integer() and float(h.rescale_intercept).is_integer()
        for h in planes
    )
    dtype = np.int16 if exact else np.float32
    voxels = np.empty((len(planes), first.rows, first.columns), dtype=dtype)
    by_file: dict[Path, list[tuple[int, SliceHeader]]] = defaultdict(list)
    for index, header in enumerate(planes):
        by_file[header.path].append((index, header))
    workers = threads or default_threads()
    compressed = first.transfer_syntax not in NATIVE_SYNTAXES
    if compressed and workers > 1 and len(by_file) >= 8:
        pool = _process_pool(workers)
        futures = [
            pool.submit(_decode_file, path, items, voxels.dtype.str)
            for path, items in by_file.items()
        ]
        for decoded in futures:
            for index, plane in decoded.result():
                voxels[index] = plane
    else:
        with ThreadPoolExecutor(max_workers=workers) as threads_pool:
            for future in [
                threads_pool.submit(_decode_into, voxels, path, items)
                for path, items in by_file.items()
            ]:
                future.result()

    dy, dx = first.pixel_spacing  # type: ignore[misc]
    orientation = np.array(first.orientation, dtype=float)
    normal = np.array(ordered.normal)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * dx
    affine[:3, 1] = orientation[3:] * dy
    affine[:3, 2] = normal * ordered.spacing
    affine[:3, 3] = first.position
    return Volume(
        voxels=voxels,
        spacing=(ordered.spacing, float(dy), float(dx)),
        affine=affine,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        slices=tuple(
            SliceRef(h.sop_class_uid, h.sop_instance_uid, None if h.frame is None else h.frame + 1)
            for h in planes
        ),
        kernel=first.kernel,
        series_description=first.series_description,
        slice_thickness=first.slice_thickness,
        contrast=first.contrast,
        notes=ordered.notes,
    )


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """One decoding pool per process, started on first use and kept: the compressed-pixel
    decoders hold the GIL, so only processes decode on several cores. ``forkserver``
    because the node is multi-threaded (forking it could copy a held lock)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            context = multiprocessing.get_context("forkserver")
            _POOL = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        return _POOL


_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _decode_file(
    path: Path, items: list[tuple[int, SliceHeader]], dtype: str
) -> list[tuple[int, npt.NDArray[np.generic]]]:
    """Decode one file's planes to HU (runs in a pool process)."""
    planes = np.empty((len(items), items[0][1].rows, items[0][1].columns), dtype=np.dtype(dtype))
    _decode_into(planes, path, [(k, header) for k, (_, header) in enumerate(items)])
    return [(index, planes[k]) for k, (index, _) in enumerate(items)]


def _decode_into(
    voxels: npt.NDArray[np.generic], path: Path, items: list[tuple[int, SliceHeader]]
) -> None:
    try:
        ds = dcmread(path)
        pixels = ds.pixel_array
    except NotImplementedError as exc:
        raise InvalidSeries(
            errors.UNSUPPORTED_TRANSFER_SYNTAX,
            f"no decoder for transfer syntax {items[0][1].transfer_syntax}",
        ) from exc
    except (ValueError, EOFError, OSError, RuntimeError, AttributeError, KeyError) as exc:
        code = errors.TRUNCATED_PIXEL_DATA if _looks_truncated(exc) else errors.UNREADABLE
        raise InvalidSeries(code, f"pixel data of an image cannot be decoded: {exc}"[:300]) from exc
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1 and pixels.ndim == 2:
        raise InvalidSeries(errors.TRUNCATED_PIXEL_DATA, "fewer frames than NumberOfFrames")
    for index, header in items:
        plane = pixels[header.frame] if header.frame is not None and pixels.ndim == 3 else pixels
        if plane.shape != (header.rows, header.columns):
            raise InvalidSeries(
                errors.TRUNCATED_PIXEL_DATA,
                f"decoded image is {plane.shape}, header says {header.rows}x{header.columns}",
            )
        voxels[index] = _to_hu(plane, header, voxels.dtype)


def _to_hu(
    plane: npt.NDArray[np.generic], header: SliceHeader, dtype: np.dtype[np.generic]
) -> npt.NDArray[np.generic]:
    stored = plane.astype(np.float32 if dtype == np.float32 else np.int32)
    hu = stored * header.rescale_slope + header.rescale_intercept
    if header.padding_value is not None:
        hu[plane == header.padding_value] = AIR_HU
    np.maximum(hu, AIR_HU, out=hu)
    if dtype == np.int16:
        np.minimum(hu, np.iinfo(np.int16).max, out=hu)
    return hu.astype(dtype, copy=False)


def _looks_truncated(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        word in text
        for word in (
            "length",
            "truncat",
            "shorter",
            "end of",
            "missing",
            "not enough",
            "insufficient",
            "expected",
        )
    )


def pixel_digest(header: SliceHeader) -> str:
    """Identity of a plane's pixel data, to tell identical duplicates from conflicting ones."""
    ds = dcmread(header.path)
    digest = hashlib.sha256(ds.get("PixelData", b"") or b"")
    digest.update(str(header.frame).encode())
    return digest.hexdigest()
