"""Evaluation metrics as pure functions on frames, landmarks, poses and embeddings.

Every function returns one value per frame (NaN where the input has no face) so a caller can
keep per-frame tables and aggregate with `nanmean`; PSNR comes from torchmetrics, SSIM from
scikit-image (the standard definition, `ssim`), shape alignment from scipy. Frames are (T, H, W, 3)
uint8 RGB; landmarks (T, 68, 2) pixels; poses (T, 3) yaw, pitch, roll in degrees.
"""
from __future__ import annotations

import numpy as np

#: every metric the evaluation reports, in table order, and whether a larger value is better: the one
#: list that says what a metric is (the evaluator's columns, the sweep's aggregates, what the summary
#: and the report rank and plot; any other column, a sweep param or a job count, is not one).
#: `csim` stands for `csim_<face backend>`; `fid` and `fvd` are pooled per config, not per video.
METRICS: dict[str, bool] = {
    "psnr": True, "ssim": True, "l1": False, "lpips": False, "csim": True, "akd": False, "apd": False,
    "aed": False, "jitter_error": False, "flicker_error": False, "detection_rate": True, "fid": False, "fvd": False,
}
#: metrics that need a ground truth, so the self protocol only
SELF_ONLY = ("psnr", "ssim", "l1", "lpips", "akd")


def metric_kind(name: str) -> str | None:
    """The `METRICS` entry `name` is (`csim_<backend>` is `csim`), None when it is no metric."""
    if name in METRICS and name != "csim":
        return name
    return "csim" if name.startswith("csim_") and len(name) > len("csim_") else None


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better; ValueError when `name` is no metric."""
    kind = metric_kind(name)
    if kind is None:
        raise ValueError(f"{name!r} is not a metric; the metrics are {', '.join(metric_list())}")
    return METRICS[kind]


def metric_list() -> list[str]:
    """The metric names as a person types them (`csim_<backend>` for the identity metric)."""
    return [m if m != "csim" else "csim_<backend>" for m in METRICS]


_PIXEL_CHUNK = 16  # frames per torchmetrics call, so memory stays bounded on long videos
PSNR_CAP_DB = 100.0  # identical frames have infinite PSNR; the cap keeps means and MLflow finite


def _as_tensor(frames: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape")


def _per_frame(pred: np.ndarray, target: np.ndarray, fn) -> np.ndarray:
    _check_pair(pred, target)
    out = [fn(_as_tensor(pred[i : i + _PIXEL_CHUNK]), _as_tensor(target[i : i + _PIXEL_CHUNK]))
           for i in range(0, len(pred), _PIXEL_CHUNK)]
    return np.concatenate([o.numpy().astype(np.float64) for o in out]) if out else np.zeros(0)


def psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per frame, capped at PSNR_CAP_DB for identical frames."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    values = _per_frame(pred, target, lambda p, t: peak_signal_noise_ratio(
        p, t, data_range=255.0, reduction="none", dim=(1, 2, 3)))
    return np.minimum(values, PSNR_CAP_DB)


def ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Structural similarity per frame (1 for identical frames) as Wang et al. (2004) define it and
    scikit-image's `structural_similarity` computes it (`gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255`): an 11 x 11 Gaussian window of sigma 1.5, C1 =
    (0.01 * 255)^2, C2 = (0.03 * 255)^2, population (co)variances, each RGB channel on its own, the
    SSIM map averaged over the pixels whose window lies inside the frame (a 5 px border is left out)
    and the three channels averaged. torchmetrics averages over the reflect-padded border too, which
    read up to 0.024 higher on real frames."""
    from skimage.metrics import structural_similarity

    _check_pair(pred, target)
    return np.array([structural_similarity(p, t, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=255.0)
                     for p, t in zip(pred, target)], np.float64)


def l1(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean absolute pixel error per frame, on a 0..1 scale."""
    _check_pair(pred, target)
    diff = np.abs(pred.astype(np.float32) - target.astype(np.float32)) / 255.0
    return diff.reshape(len(pred), -1).mean(axis=1).astype(np.float64)


def face_size(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame face size: the square root of the landmarks' bounding-box area, in pixels."""
    extent = landmarks.max(axis=1) - landmarks.min(axis=1)
    return np.sqrt(extent[:, 0] * extent[:, 1])


def akd(pred_landmarks: np.ndarray, target_landmarks: np.ndarray) -> np.ndarray:
    """Average keypoint distance per frame, as a fraction of the target's face size.

    Both sets must live in the same pixel space (same frame size and framing); normalising by
    face size makes numbers comparable across resolutions.
    """
    _check_pair(pred_landmarks, target_landmarks)
    dist = np.linalg.norm(pred_landmarks - target_landmarks, axis=2).mean(axis=1)
    return dist / face_size(target_landmarks)


def apd(pred_pose: np.ndarray, target_pose: np.ndarray) -> np.ndarray:
    """Average absolute head-pose error per frame in degrees, over yaw, pitch and roll.

    Differences are wrapped to [-180, 180) so 179 vs -179 counts as 2 degrees.
    """
    _check_pair(pred_pose, target_pose)
    diff = (np.asarray(pred_pose, np.float64) - target_pose + 180.0) % 360.0 - 180.0
    return np.abs(diff).mean(axis=1)


def apd_change(pred_pose: np.ndarray, target_pose: np.ndarray) -> np.ndarray:
    """Head-pose error per frame between two different people: how differently their heads *turn*,
    so the pose each starts from (the portrait's own, the driver's) drops out.

    The anchor is the first frame where both have a pose (no face or a profile has none, so it may
    come after `aed_change`'s, the first frame where both have a face). Each video's
    change is its pose minus its anchor pose (yaw, pitch, roll each), and the value is `apd` of the
    two changes: the mean absolute difference in degrees, wrapped. NaN at and before the anchor (no
    change is measured there) and where either has no face; 0 when both turn alike from wherever
    they started.
    """
    _check_pair(pred_pose, target_pose)
    pred, target = np.asarray(pred_pose, np.float64), np.asarray(target_pose, np.float64)
    out = np.full(len(pred), np.nan)
    both = np.flatnonzero(np.isfinite(pred).all(axis=1) & np.isfinite(target).all(axis=1))
    if len(both) < 2:
        return out
    anchor, later = both[0], both[1:]
    out[later] = apd(pred[later] - pred[anchor], target[later] - target[anchor])
    return out


def aed(pred_landmarks: np.ndarray, target_landmarks: np.ndarray) -> np.ndarray:
    """Expression distance per frame: landmark-shape error after removing pose and size.

    Each pair is aligned by Procrustes analysis (translation, in-plane rotation and scale are
    removed, both shapes scaled to unit norm); the value is the mean point distance that remains,
    so a moved, turned or zoomed copy of the same expression scores 0.
    """
    from scipy.spatial import procrustes

    _check_pair(pred_landmarks, target_landmarks)
    out = np.full(len(pred_landmarks), np.nan)
    for i, (pred, target) in enumerate(zip(pred_landmarks, target_landmarks)):
        if np.isfinite(pred).all() and np.isfinite(target).all():
            aligned_target, aligned_pred, _ = procrustes(target, pred)
            out[i] = np.linalg.norm(aligned_target - aligned_pred, axis=1).mean()
    return out


def _expression_changes(landmarks: np.ndarray, anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """(the anchor frame's shape, every frame's change from it): the anchor centred and scaled to
    unit norm, each frame Procrustes-aligned onto it (as `aed` aligns), then the anchor subtracted;
    NaN where a frame has no face. The changes live in the anchor's own orientation and size."""
    from scipy.spatial import procrustes

    centred = landmarks[anchor] - landmarks[anchor].mean(axis=0)
    reference = centred / np.linalg.norm(centred)
    changes = np.full(landmarks.shape, np.nan)
    for i, frame in enumerate(landmarks):
        if np.isfinite(frame).all():
            changes[i] = procrustes(reference, frame)[1] - reference
    return reference, changes


def aed_change(pred_landmarks: np.ndarray, target_landmarks: np.ndarray) -> np.ndarray:
    """Expression distance per frame between two different people: how differently their faces
    *change*, so face shape (identity) and pose drop out.

    The anchor is the first frame where both have a face. Each video's frames are compared with its
    own anchor frame (`_expression_changes`: Procrustes alignment, then the difference, in unit-norm
    shape space); the target's changes are turned by the rotation that best aligns its anchor onto
    the pred's, and the value is the mean point distance between the two changes. NaN at and before
    the anchor (no change is measured there) and where either has no face; 0 when both change alike.
    """
    from scipy.linalg import orthogonal_procrustes

    _check_pair(pred_landmarks, target_landmarks)
    out = np.full(len(pred_landmarks), np.nan)
    both = np.flatnonzero(np.isfinite(pred_landmarks).all(axis=(1, 2)) & np.isfinite(target_landmarks).all(axis=(1, 2)))
    if len(both) < 2:
        return out
    pred_anchor, pred_changes = _expression_changes(pred_landmarks, both[0])
    target_anchor, target_changes = _expression_changes(target_landmarks, both[0])
    turn, _ = orthogonal_procrustes(target_anchor, pred_anchor)
    distance = np.linalg.norm(pred_changes - target_changes @ turn, axis=2).mean(axis=1)
    out[both[1:]] = distance[both[1:]]
    return out


def csim(embeddings: np.ndarray, reference_embedding: np.ndarray) -> np.ndarray:
    """Cosine similarity of each frame's identity embedding to the reference's."""
    emb = np.asarray(embeddings, np.float64)
    ref = np.asarray(reference_embedding, np.float64)
    return emb @ ref / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref))


def landmark_jitter(landmarks: np.ndarray) -> np.ndarray:
    """Temporal jitter of one video: mean landmark acceleration per frame (frames 1..T-2), per face size.

    Smooth motion (still or constant velocity) scores 0; frame-to-frame shaking does not, and nor
    does real talking, so this describes a video rather than scoring it (`jitter_error` compares it
    with the driver's). Returns T values with NaN at both ends, where acceleration is undefined.
    """
    out = np.full(len(landmarks), np.nan)
    if len(landmarks) >= 3:
        accel = landmarks[2:] - 2.0 * landmarks[1:-1] + landmarks[:-2]
        out[1:-1] = np.linalg.norm(accel, axis=2).mean(axis=1) / face_size(landmarks[1:-1])
    return out


def jitter_error(pred_landmarks: np.ndarray, target_landmarks: np.ndarray, window: int) -> np.ndarray:
    """How far the output's jitter is from the driver's: per window of about `window` frames (the
    video cut into round(T / window) equal parts, at least one), |mean jitter(pred) - mean
    jitter(target)| over the window's frames where both have a value; each of those frames holds its
    window's value, NaN elsewhere.

    Real talking moves landmarks, so the output's own jitter rewarded not moving (a still output
    won, a real video lost to warp). Against the driver's, a copy scores about 0, a still output the
    driver's motion, a shaking one its shaking. Window means, not frames: each video's landmark
    noise is its own, and |a - b| of two noisy frame values is biased upward by it (a lossless
    re-encode of the clip scored 26-62% of the still output frame by frame); windows, not the
    whole video, so shaking in one part is not cancelled by stillness in another. Magnitudes, not
    acceleration vectors: noise dominates single-frame accelerations, and the vector error ranked
    the still output first on all six real clips measured. Each side per its own face size, so
    two people compare (cross).
    """
    _check_pair(pred_landmarks, target_landmarks)
    pred_jitter, target_jitter = landmark_jitter(pred_landmarks), landmark_jitter(target_landmarks)
    out = np.full(len(pred_jitter), np.nan)
    both = np.isfinite(pred_jitter) & np.isfinite(target_jitter)
    for part in np.array_split(np.arange(len(out)), max(1, round(len(out) / window))):
        kept = part[both[part]]
        if len(kept):
            out[kept] = abs(pred_jitter[kept].mean() - target_jitter[kept].mean())
    return out


def luminance(frames: np.ndarray) -> np.ndarray:
    """Mean Rec. 601 luma of each frame, 0..255."""
    weights = np.array([0.299, 0.587, 0.114], np.float64)
    return frames.reshape(len(frames), -1, 3).mean(axis=1) @ weights


def flicker(frames: np.ndarray) -> np.ndarray:
    """Brightness flicker of one video per frame: how far a frame's mean luma is from its
    neighbours' average.

    A steady or steadily changing brightness scores 0; alternating +d/-d scores 2d. Real talking
    (a mouth opening) scores too, so `flicker_error` compares it with the driver's. NaN at both
    ends. Takes frames (T, H, W, 3) or precomputed luma (T,).
    """
    luma = luminance(frames) if np.ndim(frames) == 4 else np.asarray(frames, np.float64)
    out = np.full(len(luma), np.nan)
    if len(luma) >= 3:
        out[1:-1] = np.abs(luma[1:-1] - 0.5 * (luma[:-2] + luma[2:]))
    return out


def flicker_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """How far the output's flicker is from the driver's on each frame: |flicker(pred) -
    flicker(target)|, 0..255 luma.

    A copy scores 0, a still output the driver's own flicker, generated brightness pumping what it
    adds. Takes frames (T, H, W, 3) or luma (T,) for each; NaN at both ends.
    """
    pred_flicker, target_flicker = flicker(pred), flicker(target)
    _check_pair(pred_flicker, target_flicker)
    return np.abs(pred_flicker - target_flicker)


def nanmean(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) values, NaN when there are none: every metric's aggregate."""
    values = np.asarray(values, np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")
