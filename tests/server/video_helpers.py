"""Videos for the tests, built with PyAV from a real photo: the astronaut's face moving across a frame."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from skimage import data

# container -> (PyAV format, codec, pixel format)
CONTAINERS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "mov": ("mov", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "mkv": ("matroska", "libx264", "yuv420p"),
    "avi": ("avi", "mpeg4", "yuv420p"),
}
FACE = (slice(20, 230), slice(140, 310))  # the astronaut's head and shoulders in skimage's 512x512 photo


def face_patch() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[FACE])


def moving_face_frames(n: int, width: int = 480, height: int = 320) -> list[np.ndarray]:
    """n frames: a grey-blue background, the astronaut's face sliding left to right."""
    patch = face_patch()
    ph, pw = patch.shape[:2]
    frames = []
    for i in range(n):
        canvas = np.full((height, width, 3), (90, 110, 140), dtype=np.uint8)
        x = round((width - pw) * i / max(1, n - 1))
        y = (height - ph) // 2
        canvas[y : y + ph, x : x + pw] = patch
        frames.append(canvas)
    return frames


def make_video(kind: str = "mp4", n: int = 24, fps: int = 12, width: int = 480, height: int = 320,
               gop: int | None = None, rotate: int = 0, pts: list[int] | None = None,
               frames: list[np.ndarray] | None = None) -> bytes:
    """Encode frames in a container; `pts` (in 1/1000 s) makes a variable-frame-rate clip."""
    fmt, codec, pix = CONTAINERS[kind]
    buf = io.BytesIO()
    pictures = frames if frames is not None else moving_face_frames(n, width, height)
    if rotate:  # stored turned clockwise; the display matrix says "turn counter-clockwise to show"
        pictures = [np.ascontiguousarray(np.rot90(p, -rotate // 90)) for p in pictures]
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = pictures[0].shape[1], pictures[0].shape[0], pix
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                stream.codec_context.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotate:
            stream.set_display_rotation(rotate)  # a display matrix: mov/mp4 muxers write it in tkhd
        for i, arr in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
