"""Both face backends on package-shipped images and on the real media in ../shared."""
from __future__ import annotations

from pathlib import Path

import cv2
import decord
import numpy as np
import onnx
import pytest
import skimage.data

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face import model_files, onnx_fix
from portraitflow.models.face.base import Face, FaceAnalyzer
from portraitflow.models.face.factory import create_analyzer
from portraitflow.models.face.images import load_image

BACKENDS = ["opencv", "insightface"]


@pytest.fixture(scope="module")
def analyzers() -> dict[str, FaceAnalyzer]:
    """Backends built once per module, on first use (insightface only when its pack is here)."""
    return {}


@pytest.fixture(params=BACKENDS)
def analyzer(request, analyzers) -> FaceAnalyzer:
    backend = request.param
    if backend not in analyzers:
        cfg = FaceConfig(backend=backend)
        if backend == "insightface":
            cfg = FaceConfig(backend=backend, insightface_pack="pack",
                             insightface_root=str(request.getfixturevalue("insightface_root")))
        analyzers[backend] = create_analyzer(cfg)
    return analyzers[backend]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def _frames(path: Path, count: int) -> list[np.ndarray]:
    reader = decord.VideoReader(str(path), num_threads=1)
    return list(reader.get_batch(list(np.linspace(0, len(reader) - 1, count).round().astype(int))).asnumpy())


def _still(media_dir: Path, name: str) -> np.ndarray:
    loaded = load_image(media_dir / name)
    assert loaded.ok, loaded.reason
    return loaded.rgb


def _largest(analyzer: FaceAnalyzer, frames: list[np.ndarray]) -> list[Face]:
    found = analyzer.detect(frames)
    assert all(found), [len(f) for f in found]
    return [faces[0] for faces in found]


def _inside(points: np.ndarray, box: np.ndarray, margin: float) -> bool:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return bool(np.all((points[:, 0] >= x1 - mx) & (points[:, 0] <= x2 + mx)
                       & (points[:, 1] >= y1 - my) & (points[:, 1] <= y2 + my)))


def test_astronaut_one_face_keypoints_landmarks_embedding(analyzer, astronaut):
    faces = analyzer.detect([astronaut])[0]
    assert len(faces) == 1
    face = faces[0]
    assert face.score >= 0.6 and 60 <= face.side <= 160
    assert _inside(face.kps, face.box, 0.0)
    left_eye, right_eye, nose, left_mouth, right_mouth = face.kps
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0] and left_eye[1] < nose[1] < left_mouth[1]
    landmarks = analyzer.landmarks([astronaut], face.box[None])
    assert landmarks.shape == (1, 68, 2) and _inside(landmarks[0], face.box, 0.1)
    # landmark 36/45 are the outer eye corners: beside the detector's eye keypoints
    assert np.linalg.norm(landmarks[0, 36] - left_eye) < face.side * 0.15
    assert np.linalg.norm(landmarks[0, 45] - right_eye) < face.side * 0.15
    embedding = analyzer.embed([astronaut], [face])
    assert embedding.shape == (1, analyzer.embedding_dim) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    pose = analyzer.head_pose(landmarks, [astronaut.shape[:2]])
    assert pose.shape == (1, 3) and abs(pose[0, 0]) < 25 and abs(pose[0, 2]) < 15


def test_batched_calls_equal_single_calls(analyzer, astronaut):
    other = np.ascontiguousarray(astronaut[:, ::-1])
    batched = analyzer.detect([astronaut, other])
    singles = [analyzer.detect([astronaut])[0], analyzer.detect([other])[0]]
    for got, want in zip(batched, singles):
        assert len(got) == len(want)
        np.testing.assert_allclose(got[0].box, want[0].box)
    faces = [batched[0][0], batched[1][0]]
    together = analyzer.embed([astronaut, other], faces)
    apart = np.concatenate([analyzer.embed([astronaut], faces[:1]), analyzer.embed([other], faces[1:])])
    np.testing.assert_allclose(together, apart, atol=1e-5)
    assert analyzer.embed([], []).shape == (0, analyzer.embedding_dim)
    assert analyzer.landmarks([], np.zeros((0, 4))).shape == (0, 68, 2)


def test_blank_tiny_and_grayscale_frames_do_not_crash(analyzer, astronaut):
    gray = np.repeat(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    found = analyzer.detect([np.zeros((480, 640, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8), gray])
    assert found[0] == [] and found[1] == [] and len(found[2]) == 1


def test_mirrored_face_has_mirrored_yaw_and_rotated_face_has_roll(analyzer, astronaut):
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    height, width = astronaut.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), -20, 1.0)  # 20 degrees clockwise on screen
    rotated = cv2.warpAffine(astronaut, turn, (width, height))
    frames = [astronaut, mirrored, rotated]
    faces = _largest(analyzer, frames)
    poses = analyzer.head_pose(analyzer.landmarks(frames, np.stack([f.box for f in faces])), [f.shape[:2] for f in frames])
    assert abs(poses[0, 0] + poses[1, 0]) < 5 and abs(poses[0, 2] + poses[1, 2]) < 5
    assert 12 < poses[2, 2] - poses[0, 2] < 28


def test_same_talking_video_above_threshold_and_different_people_below(analyzer, media_dir: Path):
    videos = ["liveportrait_d19.mp4", "videoretalking_4.mp4", "skyreels_driving_4.mp4"]
    photos = ["aniportrait_Aragaki.png", "openface_carell.jpg"]
    groups = [_frames(media_dir / name, 5) for name in videos] + [[_still(media_dir, name)] for name in photos]
    embeddings = []
    for frames in groups:
        embeddings.append(analyzer.embed(frames, _largest(analyzer, frames)))
    threshold = analyzer.same_person_threshold
    for i, own in enumerate(embeddings):
        if len(own) > 1:
            assert (own @ own.T)[np.triu_indices(len(own), 1)].min() >= threshold
        for other in embeddings[i + 1:]:
            assert (own @ other.T).max() < threshold


def test_real_photos_faces_counts_and_landmarks(analyzer, media_dir: Path):
    two = _still(media_dir, "face_recognition_two_people.jpg")
    grass = _still(media_dir, "face_alignment_grass.jpg")
    tight = _still(media_dir, "insightface_Tom_Hanks_54745.png")  # a 112x112 crop the face fills
    found = analyzer.detect([two, grass, tight])
    assert len(found[0]) == 2 and found[1] == [] and len(found[2]) == 1
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in found[0]]
    assert areas[0] >= areas[1]
    boxes = np.stack([found[0][0].box, found[0][1].box])
    landmarks = analyzer.landmarks([two, two], boxes)
    for points, box in zip(landmarks, boxes):
        assert _inside(points, box, 0.1)


def test_profiles_read_their_yaw_from_the_detector_keypoints(analyzer, media_dir: Path):
    """Both photos face the image's left (negative yaw); the 68-point landmarks read them as nearly
    frontal, the detector's keypoints as profiles with the right sign, mirrored with the other."""
    from portraitflow.models.face.pose import yaw_from_keypoints

    left = _still(media_dir, "inspireface_pose_left_face.jpeg")
    right = _still(media_dir, "deca_AFLW2000_image00181.jpg")
    frames = [left, np.ascontiguousarray(left[:, ::-1]), right, np.ascontiguousarray(right[:, ::-1])]
    faces = _largest(analyzer, frames)
    yaw = yaw_from_keypoints(np.stack([f.kps for f in faces]), np.stack([f.box for f in faces]))
    assert yaw[0] < -45 and yaw[1] > 45 and yaw[2] < -45 and yaw[3] > 45, yaw
    frontal = _largest(analyzer, [_still(media_dir, "liveportrait_s12.jpg")])[0]
    assert abs(yaw_from_keypoints(frontal.kps[None], frontal.box[None])[0]) < 15


def test_insightface_without_a_pack_fails_with_one_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(model_files.INSIGHTFACE_ROOT_ENV, raising=False)
    with pytest.raises(model_files.ModelFilesMissing, match="no insightface root given"):
        create_analyzer(FaceConfig(backend="insightface"))
    with pytest.raises(model_files.ModelFilesMissing, match=r"models/buffalo_l.*does not exist.*PORTRAITFLOW_INSIGHTFACE_ROOT"):
        create_analyzer(FaceConfig(backend="insightface", insightface_root=str(tmp_path)))
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"")
    with pytest.raises(model_files.ModelFilesMissing, match="lacks a detector or a recogniser"):
        create_analyzer(FaceConfig(backend="insightface", insightface_root=str(tmp_path)))


def test_insightface_pack_found_through_the_environment(insightface_root: Path, monkeypatch, astronaut):
    monkeypatch.setenv(model_files.INSIGHTFACE_ROOT_ENV, str(insightface_root))
    analyzer = create_analyzer(FaceConfig(backend="insightface", insightface_pack="pack"))
    assert analyzer.name == "insightface" and analyzer.embedding_dim == 128
    assert len(analyzer.detect([astronaut])[0]) == 1


def test_default_config_builds_the_opencv_backend():
    analyzer = create_analyzer(FaceConfig())
    assert analyzer.name == "opencv" and analyzer.embedding_dim == 128
    assert 0.0 < analyzer.same_person_threshold < 1.0


def test_sface_fix_is_cached_atomically_and_keyed_by_content(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(onnx_fix.CACHE_ENV, str(tmp_path))
    source = model_files.opencv_models()["sface"]
    original = onnx.load(str(source))
    assert len(original.graph.input) > 1  # the shipped file lists its weights as inputs
    fixed = onnx_fix.opencv_loadable(source)
    assert fixed.parent == tmp_path / "onnx" and fixed.exists()
    assert [value.name for value in onnx.load(str(fixed)).graph.input] == ["data"]
    assert [p.name for p in fixed.parent.iterdir()] == [fixed.name]  # no temp file left behind
    mtime = fixed.stat().st_mtime_ns
    assert onnx_fix.opencv_loadable(source) == fixed and fixed.stat().st_mtime_ns == mtime
    recogniser = cv2.FaceRecognizerSF.create(str(fixed), "")
    feature = recogniser.feature(np.zeros((112, 112, 3), np.uint8))
    assert feature.shape == (1, 128)


def test_opencv_alignment_matches_sface_own_align_crop(astronaut):
    analyzer = create_analyzer(FaceConfig())
    face = analyzer.detect([astronaut])[0][0]
    from portraitflow.models.face.align import align_arcface

    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    row = np.concatenate([face.box[:2], face.box[2:] - face.box[:2], face.kps.ravel(), [face.score]]).astype(np.float32)
    theirs = cv2.FaceRecognizerSF.create(str(onnx_fix.opencv_loadable(model_files.opencv_models()["sface"])), "").alignCrop(bgr, row)
    assert np.abs(theirs.astype(int) - align_arcface(bgr, face.kps)).mean() < 0.5


def test_ray_actor_builds_the_analyzer_in_init(ray_local, astronaut):
    import ray

    @ray.remote(num_cpus=1)
    class FaceActor:
        def __init__(self, cfg: FaceConfig) -> None:
            self.analyzer = create_analyzer(cfg)

        def boxes(self, frames: list[np.ndarray]) -> list[int]:
            return [len(found) for found in self.analyzer.detect(frames)]

    actor = FaceActor.remote(FaceConfig())
    assert ray.get(actor.boxes.remote([astronaut, np.zeros((64, 64, 3), np.uint8)]), timeout=120) == [1, 0]
    ray.kill(actor)
