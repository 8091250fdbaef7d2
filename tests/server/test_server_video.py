"""Video through the real server on a socket: containers, sampling, faces, limits, hostile files, workers.

Every clip is built here with PyAV from skimage's astronaut photo: her face slides across the frame.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from deepdetect_server.checkpoint import load_checkpoint
from deepdetect_server.faces import with_margin
from deepdetect_server.model import Detector
from deepdetect_server.preprocess import Preprocessor
from PIL import Image
from server_helpers import make_checkpoint, metric
from video_helpers import make_video

FRAMES = 8


@pytest.fixture(scope="module")
def face_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("faces") / "faces.safetensors", input_size=64,
                           faces={"detector": "haar", "margin": 0.2, "min_size": 40},
                           aggregation={"rule": "confident", "frames": FRAMES})


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {kind: make_video(kind) for kind in ("mp4", "mov", "webm", "mkv", "avi")}


@pytest.fixture
def video_server(start_server, face_checkpoint: Path):  # -> Callable[..., ThreadedServer]
    def start(**overrides: object):
        base: dict[str, object] = {"checkpoint": face_checkpoint, "video_enabled": True, "video_workers": 2,
                                   "cache_enabled": False}
        return start_server(**{**base, **overrides})
    return start


def detect(url: str, data: bytes, **params: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/detect", content=data, params=params, timeout=60)


def decoded_frames(data: bytes) -> dict[float, np.ndarray]:
    """Every frame by presentation time (s from the first), decoded independently of the server."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    start = min(t for t, _ in frames)
    return {round(t - start, 3): arr for t, arr in frames}


@pytest.mark.parametrize("kind", ["mp4", "mov", "webm", "mkv", "avi"])
def test_every_container_finds_the_moving_face_in_every_sampled_frame(video_server, clips, kind):
    srv = video_server()
    r = detect(srv.url, clips[kind])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["media"] == "video" and body["outcome"] == "scored" and body["rule"] == "confident"
    assert body["frames_sampled"] == FRAMES and body["faces_found"] == FRAMES
    assert body["label"] in ("real", "fake") and body["verdict"] == body["label"]
    ts = [f["t"] for f in body["frames"]]
    assert ts == sorted(ts) and ts[0] < 0.25 and ts[-1] > 1.6  # spread over the 2 s clip
    xs = [f["box"][0] for f in body["frames"]]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 200  # the face moves left to right: the box follows
    for f in body["frames"]:
        x0, y0, x1, _ = f["box"]
        assert 90 < x1 - x0 < 200 and 40 < y0 < 160  # one face-sized box where the face is, per frame


def test_answer_equals_scoring_each_crop_alone(video_server, clips, face_checkpoint):
    """Batched with other requests' crops, the scores are those of each crop scored on its own."""
    srv = video_server(max_batch_size=16, max_delay_ms=50)
    kinds = ("mp4", "mkv", "avi")
    results: dict[str, httpx.Response] = {}
    threads = [threading.Thread(target=lambda k=k: results.setdefault(k, detect(srv.url, clips[k])))
               for k in kinds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_batch_size_count")
    assert batches < 3 * FRAMES  # crops were batched, not scored one forward each
    loaded = load_checkpoint(face_checkpoint)
    detector = Detector(loaded.card, loaded.tensors, device="cpu")
    prep = Preprocessor(loaded.card, 10**9)
    for kind in kinds:
        assert results[kind].status_code == 200, results[kind].text
        frames = decoded_frames(clips[kind])
        for f in results[kind].json()["frames"]:
            rgb = frames[round(f["t"], 3)]
            x0, y0, x1, y1 = with_margin(tuple(f["box"]), 0.2, rgb.shape[1], rgb.shape[0])
            crop = prep.from_rgb(Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1])))
            [alone] = detector.predict([crop])
            assert abs(float(alone) - f["score"]) < 1e-5


def test_rotated_clip_is_turned_upright_before_face_detection(video_server):
    srv = video_server()
    body = detect(srv.url, make_video("mp4", rotate=90)).json()
    # The stored frames are 320x480 with the face on its side: Haar finds none unless the frame is turned.
    assert body["outcome"] == "scored" and body["faces_found"] == FRAMES
    xs = [f["box"][0] for f in body["frames"]]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 200  # upright again: moving left to right, 480 px wide
    with av.open(io.BytesIO(make_video("mp4", n=2, rotate=90))) as c:
        stored = next(c.decode(video=0)).to_ndarray(format="rgb24")
    from deepdetect_server.faces import detector
    assert stored.shape[:2] == (480, 320) and detector("haar").detect(stored, 40) == []


def test_variable_frame_rate_is_sampled_by_time_not_index(video_server):
    pts = [0, 40, 80, 120, 160, 200, 240, 280, 1000, 2000, 3000, 3900]  # 8 frames in 0.3 s, then sparse
    clip = make_video("mkv", n=len(pts), pts=pts)
    srv = video_server()
    body = detect(srv.url, clip, max_frames=4).json()
    ts = [f["t"] for f in body["frames"]]
    # Targets at 0.5, 1.5, 2.5, 3.5 s of ~4 s: the frame on screen then. By index it would be 0.08..3.0.
    assert ts == [0.28, 1.0, 2.0, 3.0], ts
    assert body["frames_sampled"] == 4


def test_long_gop_keeps_decoding_and_short_gops_skip_undecoded():
    from deepdetect_server.video import SampleStats, VideoLimits, sample

    limits = VideoLimits(600, 10**7, 120, 4)
    one_key = make_video("mp4", n=120, fps=30, width=320, height=240, gop=120)
    stats = SampleStats()
    frames = sample(one_key, "mov", limits, 4, stats)
    assert [round(f.t, 3) for f in frames] == [0.5, 1.5, 2.5, 3.5]
    assert stats.restarts == 1 and stats.frames_decoded <= 120  # one keyframe: never restarted
    short = make_video("mp4", n=120, fps=30, width=320, height=240, gop=10)
    stats = SampleStats()
    frames = sample(short, "mov", limits, 4, stats)
    assert [round(f.t, 3) for f in frames] == [0.5, 1.5, 2.5, 3.5]
    assert stats.restarts == 4 and stats.frames_decoded < 60  # only from the keyframe before each target


LIMITS = [
    ({"max_video_mb": 0.005}, 413, "max_video_mb"),
    ({"max_video_seconds": 1.0}, 422, "lasts 2.0 s"),
    ({"max_video_pixels": 480 * 320 - 1}, 422, "480x320"),
    ({"max_video_fps": 10.0}, 422, "12 frames/s"),
    ({"video_decode_timeout_s": 0.001}, 422, "longer than"),
]


@pytest.mark.parametrize(("overrides", "status", "message"), LIMITS)
def test_each_limit_answers_its_status_before_the_work_it_guards(video_server, clips, overrides, status,
                                                                 message):
    srv = video_server(**overrides)
    r = detect(srv.url, clips["mp4"])
    assert r.status_code == status and message in r.json()["error"], r.text
    text = httpx.get(f"{srv.url}/metrics").text
    assert metric(text, "deepdetect_video_frames_decoded_total") == 0  # nothing was decoded
    if "video_decode_timeout_s" not in overrides:
        assert metric(text, "deepdetect_decode_workers_replaced_total") == 0
    else:
        assert metric(text, "deepdetect_decode_workers_replaced_total") == 1
        r = httpx.post(f"{srv.url}/v1/detect", content=make_video("mp4", n=2), timeout=60)
        assert r.status_code in (200, 422)  # a replacement worker serves the next request


def test_too_many_streams_is_refused(video_server):
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        streams = [out.add_stream("mpeg4", rate=12) for _ in range(3)]
        for s in streams:
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        for s in streams:
            for p in [*s.encode(frame), *s.encode(None)]:
                out.mux(p)
    srv = video_server(max_video_streams=2)
    r = detect(srv.url, buf.getvalue())
    assert r.status_code == 422 and "3 streams" in r.json()["error"]


def zero_frame_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    return buf.getvalue()


def lying_mdat(clip: bytes) -> bytes:
    i = clip.find(b"mdat") - 4
    return clip[:i] + struct.pack(">I", len(clip) * 4) + clip[i + 4 :]  # mdat claims 4x the file


def test_broken_files_get_clear_errors(video_server, clips):
    srv = video_server()
    cases = {
        "truncated mp4": (clips["mp4"][: len(clips["mp4"]) // 2], "truncated or damaged"),
        "truncated mkv": (clips["mkv"][: len(clips["mkv"]) // 2], "no frames"),
        "zero frames": (zero_frame_mp4(), "no "),
        "mdat larger than the file": (lying_mdat(clips["mp4"]), "truncated or damaged"),
    }
    for name, (data, message) in cases.items():
        r = detect(srv.url, data)
        assert r.status_code == 400 and message in r.json()["error"], (name, r.text)
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200


def test_header_that_understates_the_frame_size_does_not_get_past_the_pixel_limit(video_server, clips):
    avi = clips["avi"]
    j = avi.find(b"strf") + 12
    lying = avi[:j] + struct.pack("<ii", 64, 48) + avi[j + 8 :]  # BITMAPINFOHEADER says 64x48
    k = lying.find(b"avih") + 8 + 32
    lying = lying[:k] + struct.pack("<ii", 64, 48) + lying[k + 8 :]  # main header says 64x48 too
    srv = video_server(max_video_pixels=64 * 48 * 4)
    r = detect(srv.url, lying)
    assert r.status_code == 422 and "480x320" in r.json()["error"]  # the probed size, not the header's


def external_dref(clip: bytes) -> bytes:
    i = clip.find(b"dref")
    entry = i + 12  # after version/flags and entry count
    assert clip[entry + 4 : entry + 8] == b"url "
    return clip[: entry + 9] + b"\x00\x00\x00" + clip[entry + 12 :]  # flags 0: "the data is elsewhere"


@pytest.mark.parametrize("payload", [
    b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nfile:///etc/passwd\n",
    b"ffconcat version 1.0\nfile '/etc/passwd'\n",
    b"file '/etc/hostname'\n",
])
def test_playlists_and_concat_lists_are_refused_unopened(video_server, payload):
    srv = video_server()
    r = detect(srv.url, payload)
    assert r.status_code == 415 and "playlist" in r.json()["error"]
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_decode_seconds_count") == 0


def test_mp4_whose_data_lives_in_another_file_is_refused_unopened(video_server, clips):
    srv = video_server()
    r = detect(srv.url, external_dref(clips["mp4"]))
    assert r.status_code == 415 and "references other files" in r.json()["error"]
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_decode_seconds_count") == 0


def test_video_disabled_by_default(start_server, face_checkpoint, clips):
    srv = start_server(checkpoint=face_checkpoint)
    r = detect(srv.url, clips["mp4"])
    assert r.status_code == 415 and "video is not enabled" in r.json()["error"]


def test_worker_killed_mid_decode_fails_only_its_request(video_server, photos):
    """SIGKILL the worker decoding one video: that request gets a clear 422; images and another video
    served meanwhile succeed, and the worker is replaced for the next video."""
    big = make_video("mp4", n=240, fps=30, width=960, height=540, gop=240)
    small = make_video("mp4", n=12)
    srv = video_server(video_workers=2, max_video_frames=32)
    workers = srv.server.core.video_workers
    before = set(workers.pids())
    out: dict[str, httpx.Response] = {}
    victim = threading.Thread(target=lambda: out.setdefault("victim", detect(srv.url, big, max_frames=32)))
    victim.start()
    deadline = time.monotonic() + 10
    while not workers.busy and time.monotonic() < deadline:
        time.sleep(0.002)
    [pid] = list(workers.busy)
    os.kill(pid, signal.SIGKILL)
    others = [detect(srv.url, photos["astronaut"]) for _ in range(3)] + [detect(srv.url, small)]
    victim.join(30)
    assert out["victim"].status_code == 422 and "worker died" in out["victim"].json()["error"]
    assert all(r.status_code == 200 for r in others), [r.text for r in others]
    deadline = time.monotonic() + 20
    while len(workers.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = set(workers.pids())
    assert len(after) == 2 and pid not in after and after & before
    assert detect(srv.url, small).status_code == 200
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_decode_workers_replaced_total") == 1


@pytest.mark.parametrize("kind", ["mp4", "webm", "avi"])
def test_dropped_nonreference_frames_leave_the_samples_pixel_identical(kind):
    """Samples decoded with non-sample B-frames dropped equal the same frames of a full decode."""
    from deepdetect_server.video import SampleStats, VideoLimits, sample, sniff_video

    clip = make_video(kind, n=90, fps=30, width=320, height=240)
    stats = SampleStats()
    frames = sample(clip, sniff_video(clip), VideoLimits(600, 10**7, 120, 4), 6, stats)
    full = decoded_frames(clip)
    for f in frames:
        assert np.array_equal(f.rgb, full[round(f.t, 3)]), f.t
    if kind == "mp4":  # x264's B-frames are not referenced: most of them were never decoded
        assert stats.frames_decoded < 60
