"""Encoded images to the graph's pixel tensor with Pillow, bounded before decoding.

Each image's size is read from its header and checked against `max_pixels` before any
pixel is decoded, so a small file claiming a huge canvas (a pixel bomb) is a 400, not an
allocation; Pillow's own DecompressionBombError is a 400 as well.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from shipyard.errors import InputError, UsageError
from shipyard.processing.spec import ImageProcessing


def decode_images(array: np.ndarray, *, spec: ImageProcessing) -> np.ndarray:
    """The graph tensor for a BYTES input of encoded images ([N] or [N, 1])."""
    if array.dtype != object:
        raise InputError(f"input {spec.input!r} takes BYTES (encoded images), got {array.dtype}")
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)) or not array.size:
        raise InputError(
            f"input {spec.input!r} has shape {list(array.shape)}; send one image per row, [N]"
        )
    return np.stack(
        [decode_image(item, spec=spec, index=i) for i, item in enumerate(array.ravel())]
    )


def decode_image(data: object, *, spec: ImageProcessing, index: int = 0) -> np.ndarray:
    """One encoded image as a [C, H, W] / [H, W, C] (or flat / channel-less) array."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise UsageError("image processing needs Pillow; pip install pillow") from exc
    what = f"input {spec.input!r} element {index}"
    if isinstance(data, str):
        raise InputError(f"{what}: send the image bytes (binary or base64), not text")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"{what}: not image bytes")
    if len(data) > spec.max_bytes:
        raise InputError(f"{what}: {len(data)} bytes; images are at most {spec.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as image:
                width, height = image.size
                if width * height > spec.max_pixels:
                    raise InputError(
                        f"{what}: {width}x{height} pixels; images are at most "
                        f"{spec.max_pixels} pixels"
                    )
                image.draft(spec.mode, (spec.width, spec.height))  # JPEG: decode smaller
                converted = image.convert(spec.mode)
                if converted.size != (spec.width, spec.height):
                    converted = converted.resize(
                        (spec.width, spec.height), Image.Resampling.BILINEAR
                    )
                pixels = np.asarray(converted, dtype=np.float32)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{what}: too many pixels ({exc})") from None
    except Exception as exc:
        raise InputError(f"{what}: not a readable image ({type(exc).__name__}: {exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 1, -1)
    scaled = (pixels * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        scaled = np.transpose(scaled, (2, 0, 1))
    if not spec.channel_dim and channels == 1:
        scaled = scaled.reshape(spec.height, spec.width)
    if spec.flatten:
        scaled = scaled.reshape(-1)
    if spec.dtype == "uint8":
        clipped: np.ndarray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return clipped
    result: np.ndarray = np.ascontiguousarray(scaled.astype(spec.dtype))
    return result
