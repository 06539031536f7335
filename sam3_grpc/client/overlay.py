"""Drawing detections over an image or a video: mask tints and outlines, boxes, labels, a
legend; and writing the video in a format browsers play (needs OpenCV; PyAV for video).

The drawing is predictable, so tests can check it pixel by pixel:
- a mask is tinted strictly inside itself: every mask pixel is blended half-way towards the
  object's colour, chosen from a palette to differ clearly from the pixels under the mask; the
  mask's own edge (its pixels with a 4-neighbour outside it) is then painted in the full colour;
- the box outline is one pixel wide and lies just outside the tight box (so never on the mask);
- each label is a filled rectangle at most LABEL_HEIGHT rows tall, in the first of these places
  that lies inside the image and overlaps no label placed before it: above the box outline,
  inside the top of the box, below the outline, inside the bottom of the box (each aligned with
  the box's left edge, then its right edge, shifted to stay in the image);
- when there are more than MAX_INLINE_LABELS labels, or one finds no free place, the boxes get
  only a short number tag (placed the same way) and a legend lists "number label" beside each
  object's colour, on a dark panel blended over the image corner covering the fewest mask and
  box pixels.
Objects get different palette colours while the palette lasts.
Colours are in the channel order of the array drawn on (RGB or BGR: pass `bgr=True` for OpenCV
frames).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

# Distinct, saturated RGB colours, visually far apart.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56),
    (50, 205, 50),
    (30, 144, 255),
    (255, 215, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 140, 0),
    (148, 0, 211),
    (0, 128, 128),
    (255, 105, 180),
    (128, 128, 0),
    (0, 0, 139),
)
ALPHA = 0.5
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.4
LABEL_PADDING = 2
LABEL_HEIGHT = 18  # rows a label takes, padding included
MAX_INLINE_LABELS = 6  # more objects than this get number tags and a legend
LEGEND_BACKGROUND = (32, 32, 32)  # RGB, blended over the image at LEGEND_OPACITY
LEGEND_OPACITY = 0.8
LEGEND_INK = (255, 255, 255)
LEGEND_SWATCH = 10  # the colour square of a legend row, in pixels
_MIN_CONTRAST = 96  # the tint colour differs from the mean masked pixel by this in some channel
_EDGE_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass
class Item:
    """One thing to draw: a bool mask (H, W) or None, a box (x_min, y_min, x_max, y_max) with
    exclusive max edges, a label text, and a palette index."""

    mask: np.ndarray | None
    box: Sequence[float]
    label: str
    index: int


@dataclass(frozen=True)
class Rect:
    """Pixels left..left+width-1, top..top+height-1."""

    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:  # exclusive
        return self.left + self.width

    @property
    def bottom(self) -> int:  # exclusive
        return self.top + self.height

    def overlaps(self, other: Rect) -> bool:
        return (
            self.left < other.right
            and other.left < self.right
            and self.top < other.bottom
            and other.top < self.bottom
        )

    def inside(self, width: int, height: int) -> bool:
        return self.left >= 0 and self.top >= 0 and self.right <= width and self.bottom <= height


@dataclass
class Layout:
    """Where everything goes: per item its colour (RGB), its label text and rectangle (None for
    an item without a box or label), and the legend's rectangle and rows (colour, text)."""

    colours: list[tuple[int, int, int]]
    texts: list[str]
    labels: list[Rect | None]
    legend: Rect | None = None
    legend_rows: list[tuple[tuple[int, int, int], str]] = field(default_factory=list)


def colour_for(
    index: int, under: np.ndarray | None = None, taken: Collection[tuple[int, int, int]] = ()
) -> tuple[int, int, int]:
    """Palette colour `index`, or the next one that contrasts with the mean pixel `under`,
    preferring colours not `taken` by other objects."""
    contrasting = []
    for step in range(len(PALETTE)):
        colour = PALETTE[(index + step) % len(PALETTE)]
        if under is None or np.abs(np.asarray(colour, float) - under).max() >= _MIN_CONTRAST:
            if colour not in taken:
                return colour
            contrasting.append(colour)
    return contrasting[0] if contrasting else PALETTE[index % len(PALETTE)]


def _box_pixels(box: Sequence[float]) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = (round(v) for v in box)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _text_rect_size(text: str) -> tuple[int, int, int, int]:
    """(box width, box height, text height, baseline) of a label box for `text`."""
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, 1)
    return (
        text_w + 2 * LABEL_PADDING,
        min(LABEL_HEIGHT, text_h + baseline + 2 * LABEL_PADDING),
        text_h,
        baseline,
    )


def _label_candidates(
    box: tuple[int, int, int, int], size: tuple[int, int], width: int
) -> list[Rect]:
    """The places a label may go, best first (see the module docstring)."""
    x0, y0, x1, y1 = box
    w, h = size
    lefts = [x0 - 1, x1 - w + 1]  # aligned with the outline's left, then its right edge
    tops = [y0 - 1 - h, y0, y1 + 1, y1 - h]  # above, inside top, below, inside bottom
    places = []
    for top in tops:
        for left in lefts:
            places.append(Rect(max(0, min(left, width - w)), top, w, h))
    return places


def _place(
    box: tuple[int, int, int, int], text: str, placed: list[Rect], width: int, height: int
) -> tuple[Rect, bool]:
    """The first free place inside the image for the label of `box`, and whether one was free
    (else the inside-top place, clipped to the image)."""
    w, h, _, _ = _text_rect_size(text)
    candidates = _label_candidates(box, (w, h), width)
    for rect in candidates:
        if rect.top >= 0 and rect.bottom <= height and not any(rect.overlaps(p) for p in placed):
            return rect, True
    fallback = candidates[2]  # inside the top of the box
    return Rect(fallback.left, max(0, min(fallback.top, height - h)), w, h), False


def layout(image: np.ndarray, items: Sequence[Item], *, bgr: bool = False) -> Layout:
    """Decides colours, label places and the legend for drawing `items` on `image`."""
    height, width = image.shape[:2]
    colours: list[tuple[int, int, int]] = []
    for item in items:
        under = None
        if item.mask is not None and item.mask.any():
            under = image[item.mask].reshape(-1, 3).mean(0)
            if bgr:
                under = under[::-1]
        colours.append(colour_for(item.index, under, colours))
    labelled = [
        i for i, item in enumerate(items) if item.label and _box_pixels(item.box) is not None
    ]
    texts = [item.label for item in items]
    labels: list[Rect | None] = [None] * len(items)
    placed: list[Rect] = []
    crowded = len(labelled) > MAX_INLINE_LABELS
    if not crowded:
        for i in labelled:
            box = _box_pixels(items[i].box)
            assert box is not None
            rect, free = _place(box, texts[i], placed, width, height)
            if not free:
                crowded = True
                break
            labels[i] = rect
            placed.append(rect)
    if not crowded:
        return Layout(colours, texts, labels)

    # Crowded: number tags on the boxes, full labels in a legend.
    labels = [None] * len(items)
    placed = []
    rows = []
    for number, i in enumerate(labelled, 1):
        box = _box_pixels(items[i].box)
        assert box is not None
        texts[i] = str(number)
        rect, _ = _place(box, texts[i], placed, width, height)
        labels[i] = rect
        placed.append(rect)
        rows.append((colours[i], f"{number} {items[i].label}"))
    legend, rows = _legend_rect(rows, items, width, height)
    return Layout(colours, texts, labels, legend, rows)


def _legend_rect(
    rows: list[tuple[tuple[int, int, int], str]], items: Sequence[Item], width: int, height: int
) -> tuple[Rect | None, list[tuple[tuple[int, int, int], str]]]:
    """The legend's rectangle in the corner covering the fewest mask and box pixels, and the
    rows that fit in the image (the last one then says how many are left out)."""
    fitting = max(0, (height - 2 * LABEL_PADDING) // LABEL_HEIGHT)
    if fitting == 0:
        return None, []
    if len(rows) > fitting:
        rows = [*rows[: fitting - 1], (LEGEND_BACKGROUND, f"+{len(rows) - fitting + 1} more")]
    text_w = max(cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0] for _, text in rows)
    w = min(width, LEGEND_SWATCH + text_w + 4 * LABEL_PADDING)
    h = len(rows) * LABEL_HEIGHT + 2 * LABEL_PADDING
    occupied = np.zeros((height, width), np.uint8)
    for item in items:
        if item.mask is not None and item.mask.shape == (height, width):
            occupied |= item.mask.astype(np.uint8)
        box = _box_pixels(item.box)
        if box is not None:
            x0, y0, x1, y1 = box
            occupied[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1
    corners = [
        Rect(width - w, 0, w, h),
        Rect(0, 0, w, h),
        Rect(width - w, height - h, w, h),
        Rect(0, height - h, w, h),
    ]
    covered = [int(occupied[r.top : r.bottom, r.left : r.right].sum()) for r in corners]
    return corners[covered.index(min(covered))], rows


def draw(image: np.ndarray, items: Sequence[Item], *, bgr: bool = False) -> np.ndarray:
    """A copy of `image` (H, W, 3 uint8) with every item drawn; see the module docstring."""
    out = image.copy()
    plan = layout(image, items, bgr=bgr)

    def channels(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        return (rgb[2], rgb[1], rgb[0]) if bgr else rgb

    for item, rgb in zip(items, plan.colours, strict=True):  # tints and edges first
        mask = item.mask
        if mask is None or not mask.any():
            continue
        colour = channels(rgb)
        tint = np.asarray(colour, np.float32)
        pixels = out[mask].astype(np.float32)
        out[mask] = np.clip(np.rint((1 - ALPHA) * pixels + ALPHA * tint), 0, 255).astype(np.uint8)
        out[mask_edge(mask)] = colour
    for item, rgb in zip(items, plan.colours, strict=True):
        box = _box_pixels(item.box)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        # One pixel outside the tight box: columns x0-1 and x1, rows y0-1 and y1.
        cv2.rectangle(out, (x0 - 1, y0 - 1), (x1, y1), channels(rgb), 1, lineType=cv2.LINE_8)
    for text, rect, rgb in zip(plan.texts, plan.labels, plan.colours, strict=True):
        if rect is not None:
            _draw_text_box(out, text, rect, channels(rgb), channels(_ink_for(rgb)))
    if plan.legend is not None:
        _draw_legend(out, plan.legend, plan.legend_rows, channels)
    return out


def mask_edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` with a 4-neighbour outside it (the image border counts as inside)."""
    inner = cv2.erode(mask.astype(np.uint8), _EDGE_KERNEL, borderType=cv2.BORDER_REPLICATE)
    return mask & ~inner.astype(bool)


def _ink_for(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_text_box(out: np.ndarray, text: str, rect: Rect, colour, ink) -> None:
    _, _, text_h, _ = _text_rect_size(text)
    cv2.rectangle(out, (rect.left, rect.top), (rect.right - 1, rect.bottom - 1), colour, -1)
    cv2.putText(
        out,
        text,
        (rect.left + LABEL_PADDING, rect.top + LABEL_PADDING + text_h),
        FONT,
        FONT_SCALE,
        ink,
        1,
        lineType=cv2.LINE_AA,
    )


def legend_swatch(legend: Rect, row: int) -> Rect:
    """The colour square of legend row `row` (0-based)."""
    top = legend.top + LABEL_PADDING + row * LABEL_HEIGHT + (LABEL_HEIGHT - LEGEND_SWATCH) // 2
    return Rect(legend.left + 2 * LABEL_PADDING, top, LEGEND_SWATCH, LEGEND_SWATCH)


def _draw_legend(
    out: np.ndarray,
    legend: Rect,
    rows: list[tuple[tuple[int, int, int], str]],
    channels: Callable[[tuple[int, int, int]], tuple[int, int, int]],
) -> None:
    area = out[legend.top : legend.bottom, legend.left : legend.right]
    background = np.asarray(channels(LEGEND_BACKGROUND), np.float32)
    blended = (1 - LEGEND_OPACITY) * area.astype(np.float32) + LEGEND_OPACITY * background
    area[:] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    for row, (rgb, text) in enumerate(rows):
        swatch = legend_swatch(legend, row)
        cv2.rectangle(
            out,
            (swatch.left, swatch.top),
            (swatch.right - 1, swatch.bottom - 1),
            channels(rgb),
            -1,
        )
        (_, text_h), _ = cv2.getTextSize(text, FONT, FONT_SCALE, 1)
        baseline_y = swatch.top + (LEGEND_SWATCH + text_h) // 2
        cv2.putText(
            out,
            text,
            (swatch.right + LABEL_PADDING, baseline_y),
            FONT,
            FONT_SCALE,
            channels(LEGEND_INK),
            1,
            lineType=cv2.LINE_AA,
        )


# ----- image files ---------------------------------------------------------------------------
def write_image_overlay(data: bytes, result: Any, path: str) -> str:
    """Writes the overlay PNG; returns a note when it cannot (else "")."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as the server decodes it
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.shape[:2] != (result.height, result.width):
        return "OpenCV cannot decode the image as the server did; no overlay written"
    items: list[Item] = []
    for r in result.results:
        for d in r:
            items.append(
                Item(
                    d.mask if d.has_mask else None,
                    d.box,
                    f"{r.prompt.label} {d.score:.2f}",
                    len(items),
                )
            )
    drawn = draw(image, items, bgr=True)
    if not cv2.imwrite(path, drawn):
        raise OSError(f"cannot write {path}")
    return ""


# ----- video files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFormat:
    """An encoder and its container. `browser`: whether web browsers play the result."""

    encoder: str
    extension: str
    name: str
    browser: bool


H264_MP4 = VideoFormat("libx264", ".mp4", "H.264", True)
VP9_WEBM = VideoFormat("libvpx-vp9", ".webm", "VP9", True)
MPEG4_MP4 = VideoFormat("mp4v", ".mp4", "MPEG-4 Part 2", False)  # OpenCV's own; last resort
_ENCODER_OPTIONS = {
    "libx264": {"crf": "20", "preset": "veryfast"},
    # Constant quality (b=0), and speed over size: an overlay is for looking at.
    "libvpx-vp9": {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
}


def pyav_can_encode(encoder: str) -> bool:
    """Whether PyAV is installed and its FFmpeg has this encoder."""
    try:
        import av
    except ImportError:
        return False
    try:
        av.codec.Codec(encoder, "w")
    except (av.FFmpegError, ValueError):  # an unknown codec
        return False
    return True


def choose_video_format(can_encode: Callable[[str], bool] = pyav_can_encode) -> VideoFormat:
    """H.264 in MP4 when the installed encoders allow, else VP9 in WebM (both play in
    browsers), else OpenCV's MPEG-4 Part 2 (plays in desktop players only)."""
    for video_format in (H264_MP4, VP9_WEBM):
        if can_encode(video_format.encoder):
            return video_format
    return MPEG4_MP4


class _PyAVWriter:
    """Encodes BGR frames with PyAV as yuv420p (what browsers decode), padding an odd width or
    height by one replicated pixel column or row (4:2:0 needs even sizes)."""

    def __init__(
        self, path: str, video_format: VideoFormat, fps: float, width: int, height: int
    ) -> None:
        import av

        self._pad = (height % 2, width % 2)
        options = {"movflags": "+faststart"} if video_format.extension == ".mp4" else {}
        self._container = av.open(path, "w", options=options)
        rate = Fraction(fps).limit_denominator(1001)
        stream = self._container.add_stream(video_format.encoder, rate=rate)
        if not isinstance(stream, av.VideoStream):
            self._container.close()
            raise ValueError(f"{video_format.encoder} is not a video encoder")
        self._stream = stream
        self._stream.width = width + self._pad[1]
        self._stream.height = height + self._pad[0]
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = dict(_ENCODER_OPTIONS.get(video_format.encoder, {}))

    def write(self, image: np.ndarray) -> None:
        import av

        if any(self._pad):
            image = cv2.copyMakeBorder(
                image, 0, self._pad[0], 0, self._pad[1], cv2.BORDER_REPLICATE
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._stream.encode(None):  # flush the encoder's delayed frames
                self._container.mux(packet)
        finally:
            self._container.close()


class _OpenCVWriter:
    def __init__(self, path: str, fps: float, width: int, height: int) -> None:
        self._writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
        if not self._writer.isOpened():
            raise OSError(f"OpenCV cannot write {path} (mp4v codec)")

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image)

    def close(self) -> None:
        self._writer.release()


def _open_writer(
    path: str, video_format: VideoFormat, fps: float, width: int, height: int
) -> _PyAVWriter | _OpenCVWriter:
    if video_format.encoder == MPEG4_MP4.encoder:
        return _OpenCVWriter(path, fps, width, height)
    import av

    try:
        return _PyAVWriter(path, video_format, fps, width, height)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise OSError(f"cannot write {path} with {video_format.encoder}: {exc}") from None


def read_frames(source: str) -> Iterator[np.ndarray]:
    """The BGR frames of a local video in presentation order, decoded as the server decodes
    them (PyAV), or with OpenCV when PyAV is not installed."""
    try:
        import av
    except ImportError:
        yield from _read_frames_opencv(source)
        return
    try:
        container = av.open(source)
    except (av.FFmpegError, OSError) as exc:
        raise OSError(f"cannot read {source} to draw the overlay video: {exc}") from None
    with container:
        if not container.streams.video:
            raise OSError(f"{source} holds no video stream to draw the overlay on")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="bgr24")
        except av.FFmpegError:
            return  # a damaged tail: the server stops at the same frame


def _read_frames_opencv(source: str) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise OSError(f"OpenCV cannot read {source} to draw the overlay video")
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield image
    finally:
        capture.release()


def _frame_items(objects: list[dict], labels: dict[int, str], colour_index, shape) -> list[Item]:
    from pycocotools import mask as coco_mask

    items = []
    for obj in objects:
        segmentation = obj["segmentation"]
        mask = None
        if segmentation and tuple(segmentation["size"]) == shape:
            mask = coco_mask.decode(
                {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
            ).astype(bool)
        x, y, w, h = obj["bbox"]
        oid = obj["object_id"]
        items.append(
            Item(
                mask,
                (x, y, x + w, y + h),
                f"{labels.get(oid, '')} #{oid}".strip(),
                colour_index.get(oid, oid),
            )
        )
    return items


def write_video_overlay(
    source: str,
    path_stem: str,
    fps: float,
    labels: dict[int, str],
    frames: dict[int, list[dict]],
    *,
    only_results: bool = False,
    video_format: VideoFormat | None = None,
) -> tuple[str, int, VideoFormat]:
    """Re-reads the local video and writes it to `path_stem` + the format's extension, drawn
    over where there are results (`frames`: frame index → the objects of the track command's
    JSON). Every frame of the input is written, or with `only_results` only the frames that
    have results (an interrupted run). The format is `choose_video_format()` unless given.
    Returns (path, frames written, format)."""
    video_format = video_format or choose_video_format()
    path = path_stem + video_format.extension
    fps = fps if fps and fps > 0 else 25.0
    colour_index = {oid: i for i, oid in enumerate(sorted(labels))}
    last = max(frames, default=-1)
    writer = None
    written = 0
    try:
        for index, image in enumerate(read_frames(source)):
            if only_results and index > last:
                break
            if only_results and index not in frames:
                continue
            if writer is None:
                height, width = image.shape[:2]
                writer = _open_writer(path, video_format, fps, width, height)
            items = _frame_items(frames.get(index, []), labels, colour_index, image.shape[:2])
            writer.write(draw(image, items, bgr=True) if items else image)
            written += 1
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise OSError(f"no frame of {source} could be read to draw the overlay video")
    return path, written, video_format
