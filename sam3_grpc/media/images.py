"""Decoding client images safely: every cost is bounded before a pixel is decoded.

- Bytes: at most `max_bytes`.
- Pixels: a small file can declare a huge canvas (a decompression bomb); Pillow reads the header
  lazily, so the declared width x height is checked against `max_pixels` first.
- Work per pixel: libjpeg decodes a progressive JPEG in one full pass over the image per scan
  and only warns about absurd scan counts, so a few hundred kilobytes of repeated 26-byte scans
  can cost minutes at 49 Mpx. The scans are counted from the markers (a linear walk over the
  bytes, no decoding) and a JPEG with more than `max_scans` is refused; ordinary progressive
  JPEGs have about ten.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

from sam3_grpc.errors import InvalidArgument, Reason

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"})
_SOS = 0xDA  # start of scan
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_scans: int = 64


def invalid_image(message: str, field: str = "image", **metadata: object) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_IMAGE, field=field, metadata=metadata)


def count_jpeg_scans(data: bytes, stop_after: int) -> int:
    """The number of scans (SOS markers) of a JPEG, counting at most stop_after + 1.

    Walks the marker segments; after each SOS, skips the entropy-coded data to the next marker
    (0xFF followed by anything but 0x00, a fill 0xFF or a restart marker).
    """
    scans = 0
    position = 2  # after SOI
    size = len(data)
    while position + 4 <= size:
        if data[position] != 0xFF:
            position = data.find(b"\xff", position)
            if position < 0:
                break
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if marker == 0xD9:  # EOI
            break
        length = (data[position + 2] << 8) | data[position + 3]
        position += 2 + length
        if marker != _SOS:
            continue
        scans += 1
        if scans > stop_after:
            break
        # Entropy-coded data runs to the next real marker.
        while True:
            position = data.find(b"\xff", position)
            if position < 0 or position + 1 >= size:
                return scans
            following = data[position + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                position += 1 if following == 0xFF else 2
                continue
            break
    return scans


def decode_image(data: bytes, limits: ImageLimits, *, field: str = "image") -> np.ndarray:
    """Decodes JPEG/PNG/WebP/BMP/TIFF bytes to an RGB uint8 array of shape (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise invalid_image(f"{field} is empty: send the encoded image bytes", field)
    if len(data) > limits.max_bytes:
        raise invalid_image(
            f"image is {len(data)} bytes; this server accepts at most {limits.max_bytes} bytes",
            field,
            limit=limits.max_bytes,
        )
    try:
        with warnings.catch_warnings():
            # Our own pixel limit runs first; Pillow's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
            if header.format not in ALLOWED_FORMATS:
                raise invalid_image(
                    f"image format {header.format} is not supported; send JPEG, PNG, WebP, BMP "
                    "or TIFF",
                    field,
                )
            width, height = header.size
            if width <= 0 or height <= 0:
                raise invalid_image("image has no pixels", field)
            if width * height > limits.max_pixels:
                raise invalid_image(
                    f"image is {width}x{height} = {width * height} pixels; this server accepts "
                    f"at most {limits.max_pixels} pixels: downscale it first",
                    field,
                    limit=limits.max_pixels,
                )
            if header.format in ("JPEG", "MPO"):
                scans = count_jpeg_scans(data, limits.max_scans)
                if scans > limits.max_scans:
                    raise InvalidArgument(
                        f"the JPEG has more than {limits.max_scans} scans (ordinary progressive "
                        "JPEGs have about ten; each costs a full decoding pass); re-encode it",
                        reason=Reason.INPUT_TOO_COSTLY,
                        field=field,
                        metadata={"limit": limits.max_scans},
                    )
        return _decode_pixels(data, header)
    except InvalidArgument:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses canvases far beyond its own limit while still reading the header.
        raise invalid_image(
            f"image declares a canvas over this server's limit of {limits.max_pixels} pixels: "
            "downscale it first",
            field,
        ) from exc
    except UnidentifiedImageError as exc:
        raise invalid_image(
            "image bytes are not a readable JPEG, PNG, WebP, BMP or TIFF image", field
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise invalid_image(f"image is truncated or corrupt: {exc}", field) from exc


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None when it cannot be read."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - any unreadable header is "no size"
        return None


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
