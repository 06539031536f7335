"""Decoding client images safely: size and pixel limits are checked from the header first.

A small file can declare a huge canvas (a decompression bomb); Pillow reads the header lazily,
so the declared size is checked before a single pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np

from sam3_grpc.errors import InvalidArgument, Reason

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"})


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Decodes JPEG/PNG/WebP/BMP/TIFF bytes to an RGB uint8 array of shape (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise _invalid_image("image.content is empty: send the encoded image bytes")
    if len(data) > max_bytes:
        raise _invalid_image(
            f"image is {len(data)} bytes; this server accepts at most {max_bytes} bytes"
        )
    try:
        with warnings.catch_warnings():
            # Our own pixel limit runs first; Pillow's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise _invalid_image(
                    f"image format {image.format} is not supported; send JPEG, PNG, WebP, BMP "
                    "or TIFF"
                )
            width, height = image.size
            if width <= 0 or height <= 0:
                raise _invalid_image("image has no pixels")
            if width * height > max_pixels:
                raise _invalid_image(
                    f"image is {width}x{height} = {width * height} pixels; this server accepts "
                    f"at most {max_pixels} pixels: downscale it first"
                )
        return _decode_pixels(data, image)
    except InvalidArgument:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses canvases far beyond its own limit while still reading the header.
        raise _invalid_image(
            f"image declares a canvas over this server's limit of {max_pixels} pixels: "
            "downscale it first"
        ) from exc
    except UnidentifiedImageError as exc:
        raise _invalid_image(
            "image bytes are not a readable JPEG, PNG, WebP, BMP or TIFF image"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise _invalid_image(f"image is truncated or corrupt: {exc}") from exc


def _decode_pixels(data: bytes, header) -> np.ndarray:
    """Full decode, once the header passed the checks. OpenCV decodes straight into a numpy
    array (Pillow's array export costs a copy through bytes); Pillow remains the fallback for
    what OpenCV cannot read. EXIF orientation is ignored either way, as documented."""
    import cv2

    if header.format in ("JPEG", "MPO") and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        # OpenCV fills a truncated JPEG with grey; Pillow reports it (and reads the rare JPEG
        # with trailing bytes correctly).
        return np.array(header.convert("RGB"), dtype=np.uint8)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is not None and bgr.shape[:2] == (header.size[1], header.size[0]):
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return np.array(header.convert("RGB"), dtype=np.uint8)


def content_key(data: bytes) -> str:
    """The embedding-cache key of an encoded image: a hash of its bytes."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _invalid_image(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_IMAGE, field="image")
