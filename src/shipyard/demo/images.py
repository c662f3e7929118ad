"""Images for the demo: a PNG from pixels, and the V2 binary request that carries one.

A PNG is not text, so V2 JSON cannot hold it; the V2 binary extension can (a JSON header,
then each BYTES element as a 4-byte little-endian length and its bytes), as can TF
Serving's `{"b64": ...}`. No torch here: `shipyard demo` sends the request without it.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence

import numpy as np

from shipyard.processing.spec import IMAGE_INPUT


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit grey [H, W] (or RGB [H, W, 3]) uint8 array as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_request(
    images: Sequence[bytes], *, input_name: str = IMAGE_INPUT, outputs: Sequence[str] = ()
) -> tuple[bytes, int]:
    """(body, JSON header length) of a V2 binary request sending `images` as one BYTES
    input; POST it with `Inference-Header-Content-Length: <header length>`."""
    data = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header: dict[str, object] = {
        "inputs": [
            {
                "name": input_name,
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    if outputs:
        header["outputs"] = [{"name": name} for name in outputs]
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + data, len(head)
