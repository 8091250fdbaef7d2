"""Untrusted video bytes -> K sampled RGB frames, or a precise refusal. Runs inside a decode worker.

Hardening, in order, each before the work it guards:
1. `sniff_video`: the container from magic bytes; playlists (HLS), concat lists and anything else are
   refused without being opened, and so is a QuickTime/MP4 whose data references name another file.
2. `open_container`: FFmpeg is given the sniffed demuxer only (`format=`, and `format_whitelist` for nested
   probes) and an `io_open` that refuses every other file or URL a demuxer may try to open (FFmpeg has
   leaked local files through playlists and references). The bytes come from memory, never a path.
3. `check_limits`: streams, duration, width x height and frame rate from the header, before decoding.
4. `sample`: packets are demuxed once (cheap, no decoding); frames are decoded from the keyframe before
   each target only when that keyframe lies beyond what was already decoded (the in-memory seek), else
   decoding goes on; packets that are no sample and that no other frame refers to are dropped undecoded
   (skip_frame NONREF); only the chosen frames are converted to RGB, then turned by the display rotation.
"""

from __future__ import annotations

import io
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import CorruptVideo, UnsupportedMediaType, VideoRefused

Container = Literal["mov", "matroska", "avi"]
# FFmpeg demuxer names: "mov" is mov,mp4,m4a,3gp,3g2,mj2; "matroska" is matroska,webm.
ALLOWED_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
_MOV_TOP_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")
_PLAYLISTS = (b"#EXTM3U", b"ffconcat", b"#EXT-X", b"<?xml", b"[playlist]", b"file '", b"file:")


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float
    max_pixels: int
    max_fps: float
    max_streams: int


@dataclass(frozen=True)
class Frame:
    t: float  # presentation time, seconds from the stream start
    rgb: np.ndarray  # HxWx3 uint8, display orientation


def sniff_video(data: bytes) -> Container | None:
    """The container, None for bytes that are not video; 415 for a playlist or a referencing MOV."""
    head = data[:64].lstrip()
    if any(head.startswith(p) for p in _PLAYLISTS):
        raise UnsupportedMediaType("playlists and concat lists are refused: send the media itself")
    if data[4:8] in _MOV_TOP_BOXES:
        if external_references(data):
            raise UnsupportedMediaType("the MP4/MOV file references other files (data references): refused")
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def external_references(data: bytes) -> bool:
    """True when a `dref` box has an entry whose media is not in this file (flag 1 = self-contained)."""
    start = 0
    while (i := data.find(b"dref", start)) >= 4:
        start = i + 4
        body = i + 4  # version(1) flags(3) count(4), then entries: size(4) type(4) version(1) flags(3)
        if body + 8 > len(data):
            return False
        (count,) = struct.unpack(">I", data[body + 4 : body + 8])
        pos = body + 8
        for _ in range(min(count, 64)):
            if pos + 12 > len(data):
                break
            size, kind = struct.unpack(">I4s", data[pos : pos + 8])
            flags = int.from_bytes(data[pos + 9 : pos + 12], "big")
            if kind in (b"url ", b"urn ", b"alis", b"rsrc") and not flags & 1:
                return True
            if size < 12:
                break
            pos += size
    return False


def _refuse_io(url: str, flags: int, options: dict[str, Any]) -> None:
    raise PermissionError(f"opening {url!r} from inside a media file is refused")


def open_container(data: bytes, fmt: Container) -> Any:
    import av

    try:
        return av.open(io.BytesIO(data), format=fmt, io_open=_refuse_io,
                       options={"format_whitelist": ALLOWED_DEMUXERS, "protocol_whitelist": "file",
                                "enable_drefs": "0", "probesize": str(5 << 20),
                                "analyzeduration": str(5_000_000)})
    except Exception as exc:  # PyAV raises InvalidDataError, EOFError, ...; all mean "not readable"
        raise CorruptVideo(f"cannot read the {fmt} container: the file is truncated or damaged") from exc


def duration_s(container: Any, stream: Any) -> float:
    """Stream duration, else the container's (WebM keeps it only there)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    raise CorruptVideo("the video declares no duration")


def check_limits(container: Any, limits: VideoLimits) -> tuple[Any, float]:
    """Refuse from the header what is over a limit; returns (video stream, duration)."""
    streams = list(container.streams)
    if len(streams) > limits.max_streams:
        raise VideoRefused(f"video has {len(streams)} streams, over the limit of {limits.max_streams}")
    if not container.streams.video:
        raise CorruptVideo("the file has no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise CorruptVideo("the video stream declares no frame size")
    if width * height > limits.max_pixels:
        raise VideoRefused(f"video is {width}x{height} = {width * height} pixels, over the limit of "
                           f"{limits.max_pixels}: refused before decoding")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if fps > limits.max_fps:
        raise VideoRefused(f"video is {fps:g} frames/s, over the limit of {limits.max_fps:g}")
    seconds = duration_s(container, stream)
    if seconds <= 0:
        raise CorruptVideo("the video declares a zero duration")
    if seconds > limits.max_seconds:
        raise VideoRefused(f"video lasts {seconds:.1f} s, over the limit of {limits.max_seconds:g} s: "
                           "refused before decoding")
    return stream, seconds


def targets(start: float, seconds: float, k: int) -> list[float]:
    """K timestamps spread over the duration (the middle of K equal spans): by time, not by index."""
    return [start + (i + 0.5) * seconds / k for i in range(k)]


class _Decoder:
    """Frames of the demuxed packets in presentation order, able to restart at a keyframe."""

    def __init__(self, stream: Any, packets: list[Any], needed: list[bool] | None = None) -> None:
        self.ctx = stream.codec_context
        # needed[i] False: packet i is no sample, so the decoder may drop it if nothing refers to it
        # (skip_frame NONREF: B-frames mostly); reference frames are always decoded.
        self.needed = needed
        self.time_base = float(stream.time_base)  # a float: Fraction arithmetic per frame adds up
        self.packets = packets
        self.pos = 0  # next packet to feed
        self.frames: deque[Any] = deque()
        self.drained = False
        self.decoded = 0

    def restart_at(self, index: int) -> None:
        self.ctx.flush_buffers()
        self.pos, self.drained = index, False
        self.frames.clear()

    def next(self) -> Any | None:
        while not self.frames:
            if self.pos < len(self.packets):
                if self.needed is not None:
                    self.ctx.skip_frame = "DEFAULT" if self.needed[self.pos] else "NONREF"
                out = self.ctx.decode(self.packets[self.pos])
                self.pos += 1
            elif not self.drained:
                out, self.drained = self.ctx.decode(None), True
            else:
                return None
            self.decoded += len(out)
            self.frames.extend(out)
        return self.frames.popleft()


def _packet_time(packet: Any, time_base: float) -> float | None:
    ts = packet.pts if packet.pts is not None else packet.dts
    return None if ts is None else ts * time_base


def _demux(container: Any, stream: Any) -> list[Any]:
    try:
        return [p for p in container.demux(stream) if p.size > 0]
    except Exception as exc:
        raise CorruptVideo("cannot demux the video: the file is truncated or damaged") from exc


def _rotation(stream: Any, frame: Any) -> int:
    """Display rotation in degrees counter-clockwise (the frame's display matrix, else `rotate` tag)."""
    rot = getattr(frame, "rotation", 0) or 0
    if not rot:
        tag = stream.metadata.get("rotate")
        rot = -int(tag) if tag and tag.lstrip("-").isdigit() else 0  # the tag is clockwise
    return round(rot / 90.0) * 90 % 360


def _to_rgb(stream: Any, frame: Any, width: int, height: int) -> np.ndarray:
    if frame.width != width or frame.height != height:
        raise CorruptVideo(f"a frame is {frame.width}x{frame.height} but the header declares "
                           f"{width}x{height}: the header lies about the size")
    rgb = frame.to_ndarray(format="rgb24")
    turns = _rotation(stream, frame) // 90
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


@dataclass
class SampleStats:
    frames_decoded: int = 0
    restarts: int = 0


def sample(data: bytes, fmt: Container, limits: VideoLimits, k: int,
           stats: SampleStats | None = None) -> list[Frame]:
    """K frames spread by timestamp; see the module docstring for the order of the checks."""
    import av

    stats = stats if stats is not None else SampleStats()
    with open_container(data, fmt) as container:
        stream, seconds = check_limits(container, limits)
        # No frame threading: skip_frame is switched per packet and must apply to that packet.
        stream.thread_type = "SLICE"
        width, height = stream.codec_context.width, stream.codec_context.height
        packets = _demux(container, stream)
        if not packets:
            raise CorruptVideo("the video has no frames")
        tb = float(stream.time_base)
        times = [_packet_time(p, tb) for p in packets]
        known = [t for t in times if t is not None]
        start = min(known) if known else 0.0
        if known and max(known) - start < 0.5 * seconds - 1.0 / max(1.0, len(packets) / seconds):
            raise CorruptVideo(f"the video declares {seconds:.2f} s but its frames end at "
                               f"{max(known) - start:.2f} s: the file is truncated")
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe and times[i] is not None]
        # Spread over what the packets cover when the header understates it (some muxers, VFR)
        span = max(seconds, max(known) - start) if known else seconds
        if span > limits.max_seconds:
            raise VideoRefused(f"video frames span {span:.1f} s, over the limit of {limits.max_seconds:g} s")
        wanted = targets(start, span, k)
        decoder = _Decoder(stream, packets, _needed(times, wanted))
        try:
            frames = list(_pick(decoder, times, keyframes, wanted, stats))
        except av.error.FFmpegError as exc:
            raise CorruptVideo(f"cannot decode the video: {exc.strerror or 'damaged data'}") from exc
        if not frames:
            raise CorruptVideo("no frame of the video could be decoded")
        out = [Frame(round(t - start, 6), _to_rgb(stream, f, width, height)) for t, f in frames]
        stats.frames_decoded = decoder.decoded
        return out


def _needed(times: list[float | None], wanted: list[float]) -> list[bool]:
    """Which packets hold a sample: the last presentation time at or before each target (the first when
    none is). Packets without a time are decoded, to be safe."""
    known = sorted({t for t in times if t is not None})
    if not known:
        return [True] * len(times)
    chosen = {max((t for t in known if t <= target), default=known[0]) for target in wanted}
    return [t is None or t in chosen for t in times]


def _pick(decoder: _Decoder, times: list[float | None], keyframes: list[int],
          wanted: list[float], stats: SampleStats) -> Iterator[tuple[float, Any]]:
    """For each target: the frame on screen at that time (last with t <= target; the first if none)."""
    current: tuple[float, Any] | None = None  # last decoded frame at or before the target
    ahead: tuple[float, Any] | None = None  # a frame pulled past the previous target
    last_t = -1.0
    for target in wanted:
        key = max((i for i in keyframes if times[i] <= target), default=None)  # type: ignore[operator]
        if key is not None and key >= decoder.pos and (current is None or current[0] < times[key]):
            decoder.restart_at(key)  # everything before this keyframe is not needed: skip it undecoded
            stats.restarts += 1
            current = ahead = None
        while True:
            if ahead is None:
                frame = decoder.next()
                if frame is None:
                    break
                # frame.time_base is lost on frames flushed by frame threads: use the stream's
                t = float(frame.pts * decoder.time_base) if frame.pts is not None else last_t + 1e-3
                last_t = t
                ahead = (t, frame)
            if ahead[0] <= target:
                current, ahead = ahead, None
                continue
            break
        chosen = current if current is not None else ahead
        if chosen is None:
            return
        yield chosen
