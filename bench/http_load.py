"""The request bodies every arm gets: one image per request, the `model` field, built once.

The load itself is wrk's (bench.wrk): a C client that costs the shared cores little.
"""

from __future__ import annotations

from bench.images import BenchImage

BOUNDARY = "optic-bench-7b3f0c2a9d"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_body(image: BenchImage, model: str) -> bytes:
    """One request: the `model` form field and one file in the `images` field."""
    dash = f"--{BOUNDARY}\r\n".encode()
    return b"".join([
        dash, b'Content-Disposition: form-data; name="model"\r\n\r\n', model.encode(), b"\r\n",
        dash, f'Content-Disposition: form-data; name="images"; filename="{image.name}"\r\n'.encode(),
        b"Content-Type: image/jpeg\r\n\r\n", image.data, b"\r\n",
        f"--{BOUNDARY}--\r\n".encode(),
    ])
