"""Faces and aggregation as the card declares them: detectors on a real photo, images with face cards,
the no-face outcome, the DFDC rule at small K, and v2 BYTES carrying video."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest
from deepdetect_server.aggregate import confident, mean, topk
from deepdetect_server.checkpoint import AggregationSpec, FacesSpec
from deepdetect_server.faces import detector, find_faces, with_margin
from server_helpers import make_checkpoint, metric
from video_helpers import make_video

ASTRONAUT_FACE = (170, 60, 280, 170)  # around her face in skimage's 512x512 astronaut photo


def inside(box: tuple[int, int, int, int], region: tuple[int, int, int, int]) -> bool:
    return region[0] <= box[0] and region[1] <= box[1] and box[2] <= region[2] and box[3] <= region[3]


def test_haar_finds_exactly_the_astronaut_face(photo_arrays):
    [box] = detector("haar").detect(photo_arrays["astronaut"], 40)
    assert inside(box, ASTRONAUT_FACE)


def test_hog_finds_the_face_plus_a_false_positive(photo_arrays):
    boxes = detector("hog").detect(photo_arrays["astronaut"], 40)
    assert len(boxes) == 2 and sum(inside(b, ASTRONAUT_FACE) for b in boxes) == 1


def test_no_face_in_photos_without_people(photo_arrays):
    for name in ("coffee", "rocket"):
        assert detector("haar").detect(photo_arrays[name], 40) == []


def test_crop_adds_the_margin_and_stays_inside_the_picture(photo_arrays):
    [face] = find_faces(photo_arrays["astronaut"], FacesSpec(margin=0.5))
    x0, y0, x1, y1 = face.box
    h, w = y1 - y0, x1 - x0
    assert face.crop.shape[:2] == (h + 2 * round(h * 0.5), w + 2 * round(w * 0.5))
    assert with_margin((0, 0, 10, 10), 1.0, 15, 15) == (0, 0, 15, 15)


def test_confident_fires_at_k8_where_the_original_could_not():
    scores = [0.95, 0.9, 0.92, 0.85, 0.1, 0.3, 0.2, 0.15]  # 4 of 8 confidently fake
    assert confident(scores) == pytest.approx(mean([0.95, 0.9, 0.92, 0.85]))
    assert confident([0.05] * 8) == pytest.approx(0.05)  # nearly all confidently real
    assert confident([0.9, 0.1, 0.5, 0.5, 0.5, 0.4, 0.6, 0.5]) == pytest.approx(mean(
        [0.9, 0.1, 0.5, 0.5, 0.5, 0.4, 0.6, 0.5]))  # neither: the mean
    # the original's absolute count (> 11) still holds at K = 32
    assert confident([0.9] * 11 + [0.1] * 21) == pytest.approx(mean([0.9] * 11 + [0.1] * 21))
    assert confident([0.9] * 14 + [0.1] * 18) == pytest.approx(0.9)
    assert topk([0.1, 0.9, 0.5, 0.8], 2) == pytest.approx(0.85)
    assert AggregationSpec().rule == "mean"


@pytest.fixture(scope="module")
def face_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("faces") / "f.safetensors", input_size=64,
                           faces={"detector": "haar"}, aggregation={"rule": "topk", "frames": 4, "topk": 2})


def test_image_with_a_face_card_scores_the_face_and_no_face_is_explicit(start_server, face_checkpoint,
                                                                        photos):
    srv = start_server(checkpoint=face_checkpoint)
    body = httpx.post(f"{srv.url}/v1/detect", content=photos["astronaut"], timeout=30).json()
    assert body["media"] == "image" and body["outcome"] == "scored" and body["faces_found"] == 1
    [frame] = body["frames"]
    assert frame["t"] is None and inside(tuple(frame["box"]), ASTRONAUT_FACE)
    assert body["score"] == frame["score"] and body["label"] in ("real", "fake")
    r = httpx.post(f"{srv.url}/v1/detect", content=photos["coffee"], timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["outcome"] == "no_face" and body["score"] is None and body["label"] is None
    assert body["faces_found"] == 0
    assert body["frames"] == [{"t": None, "box": None, "score": None, "faces": 0}]


def test_v2_infer_takes_video_bytes_and_reports_no_face(start_server, face_checkpoint, photos):
    srv = start_server(checkpoint=face_checkpoint, video_enabled=True, video_workers=1)
    clip = make_video("mp4")
    request = {"inputs": [{"name": "media", "datatype": "BYTES", "shape": [3], "data": [
        base64.b64encode(clip).decode(), base64.b64encode(photos["coffee"]).decode(),
        base64.b64encode(photos["astronaut"]).decode()]}]}
    r = httpx.post(f"{srv.url}/v2/models/deepdetect/infer", json=request, timeout=60)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    detect = httpx.post(f"{srv.url}/v1/detect", content=clip, timeout=60).json()
    assert outputs["score"][0] == pytest.approx(detect["score"], abs=1e-6) and detect["rule"] == "topk"
    assert outputs["label"][1] == "no_face" and outputs["score"][1] is None
    assert outputs["label"][2] in ("real", "fake")


def test_max_frames_lowers_the_samples_and_the_cost_and_keys_the_cache(start_server, face_checkpoint):
    srv = start_server(checkpoint=face_checkpoint, video_enabled=True, video_workers=1)
    clip = make_video("mkv")
    full = httpx.post(f"{srv.url}/v1/detect", content=clip, timeout=60)
    two = httpx.post(f"{srv.url}/v1/detect", content=clip, params={"max_frames": 2}, timeout=60)
    assert full.json()["frames_sampled"] == 4 and two.json()["frames_sampled"] == 2
    assert two.headers.get("X-Cache") == "miss"  # another max_frames is another answer
    again = httpx.post(f"{srv.url}/v1/detect", content=clip, params={"max_frames": 2}, timeout=60)
    assert again.headers.get("X-Cache") == "hit" and again.json()["frames"] == two.json()["frames"]
    bad = httpx.post(f"{srv.url}/v1/detect", content=clip, params={"max_frames": "x"}, timeout=60)
    assert bad.status_code == 400 and "max_frames" in bad.json()["error"]


def test_video_job_honours_max_frames_and_the_media_limit_charges_frames(start_server, face_checkpoint):
    srv = start_server(checkpoint=face_checkpoint, video_enabled=True, video_workers=1, jobs_poll_s=0.05,
                       rate_limit_media="5/minute")
    clip = make_video("webm")
    resp = httpx.post(f"{srv.url}/v1/jobs", content=clip, params={"max_frames": 3}, timeout=30)
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 60
    while (job := httpx.get(srv.url + resp.headers["Location"]).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "succeeded" and job["result"]["frames_sampled"] == 3
    # 3 of 5 media units spent: a 4-frame video is over the limit, a 2-frame one is not
    over = httpx.post(f"{srv.url}/v1/detect", content=clip, timeout=30)
    assert over.status_code == 429
    ok = httpx.post(f"{srv.url}/v1/detect", content=clip, params={"max_frames": 2}, timeout=30)
    assert ok.status_code == 200 and ok.json()["frames_sampled"] == 2
    text = httpx.get(f"{srv.url}/metrics").text
    assert metric(text, "deepdetect_media_total", media="video") == 2
    assert metric(text, "deepdetect_frames_sampled_total") == 5
    assert metric(text, "deepdetect_frames_with_face_total") == 5  # faces found ratio 1.0
    assert metric(text, "deepdetect_video_frames_decoded_total") >= 5
    assert metric(text, "deepdetect_decode_seconds_count", media="video") == 2
