"""One training sample from one curated clip: a driving window, a reference frame from another
time of the same clip, and every encoder input in the value range SPEC.md gives (sections 2-4).

Input is a WebDataset sample as the curation flow writes it (raw bytes per member); only the
frames the window and the reference need are decoded, by seeking in the mp4 held in memory.
Pure numpy/torch on one sample, so the same function serves the PyTorch and the Ray Data paths.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.models.face.align import align_arcface
from portraitflow.operators.decode import TooFewFrames, VideoUnreadable, read_frames
from portraitflow.operators.job_status import clipped
from portraitflow.operators.motion import window_buckets

#: Members every curated sample carries (issue 3, item 8) that a training sample needs.
REQUIRED_MEMBERS = ("mp4", "landmarks.npy", "kps.npy", "pose.npy", "id.npy")
#: the lengths an identity embedding may have: curation stores them unit length, other tools raw
#: (insightface's about 20-30); zero, or one whose square overflows float32, trains on nothing or NaN
IDENTITY_NORM = (1e-3, 1e3)
MOTION_CROP_SIZE = 256  # HeadExpression / HeadPose input side (SPEC 2)


class SampleSkipped(ValueError):
    """A sample that cannot become a training sample; `reason` is a code the loader counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ClipTracks:
    """The per-frame arrays of one curated clip, validated against each other."""

    landmarks: np.ndarray  # (T, 68, 2) float32, crop pixels
    kps: np.ndarray  # (T, 5, 2) float32, crop pixels
    pose: np.ndarray  # (T, 3) float32 yaw, pitch, roll in degrees
    identity: np.ndarray  # (D,) float32
    face_boxes: np.ndarray | None = None  # (T, 4) float32 tracked face box, crop pixels (absent in older shards)

    @property
    def num_frames(self) -> int:
        return len(self.kps)


def parse_tracks(sample: Mapping[str, Any]) -> ClipTracks:
    """Load and shape-check the array members; never unpickles."""
    missing = [name for name in REQUIRED_MEMBERS if not isinstance(sample.get(name), (bytes, bytearray)) or not sample[name]]
    if missing:
        raise SampleSkipped("missing_member", f"{sample.get('__key__')} lacks {missing}")
    arrays = {name: _load_array(sample, name, shape)
              for name, shape in (("landmarks.npy", (68, 2)), ("kps.npy", (5, 2)), ("pose.npy", (3,)), ("id.npy", None))}
    if sample.get("boxes.npy"):
        arrays["boxes.npy"] = _load_array(sample, "boxes.npy", (4,))
    if np.abs(arrays["pose.npy"]).max(initial=0.0) > 180.0:  # degrees: curation writes nothing else
        raise SampleSkipped("bad_array", f"pose.npy: angles up to {np.abs(arrays['pose.npy']).max():.3g} degrees")
    norm = float(np.linalg.norm(arrays["id.npy"].astype(np.float64)))
    if not IDENTITY_NORM[0] <= norm <= IDENTITY_NORM[1]:
        raise SampleSkipped("bad_array", f"id.npy: an embedding of length {norm:.3g}")
    lengths = {len(arrays[name]) for name in ("landmarks.npy", "kps.npy", "pose.npy", "boxes.npy") if name in arrays}
    if len(lengths) != 1:
        raise SampleSkipped("frame_count_mismatch", f"per-frame arrays disagree on length: {sorted(lengths)}")
    return ClipTracks(arrays["landmarks.npy"], arrays["kps.npy"], arrays["pose.npy"], arrays["id.npy"],
                      arrays.get("boxes.npy"))


def _load_array(sample: Mapping[str, Any], name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """One finite numeric .npy member as float32: (T, *shape), or (D,) when shape is None. The
    header is read first, and its shape checked against the member's size, so a damaged one is
    counted, not raised: numpy's header parser raises SyntaxError or tokenize's TokenError for
    some bytes, and a shape that does not fit its bytes asked for terabytes."""
    data = bytes(sample[name])
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        declared, _, dtype = read_header(stream)
        size = int(np.prod(declared, dtype=np.int64)) * dtype.itemsize
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises for bytes it cannot read
        raise SampleSkipped("bad_array", f"{name}: {type(exc).__name__}: {exc}") from exc
    if dtype.hasobject or not all(type(side) is int and side >= 0 for side in declared) \
            or size != len(data) - stream.tell():
        raise SampleSkipped("bad_array", f"{name}: a header of shape {declared} {dtype} over {len(data) - stream.tell()} "
                            "bytes of data")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SampleSkipped("bad_array", f"{name}: {exc}") from exc
    ok = array.ndim == 1 if shape is None else array.shape[1:] == shape
    if not ok or not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise SampleSkipped("bad_array", f"{name}: shape {array.shape} dtype {array.dtype}")
    return array.astype(np.float32)


def sample_rng(seed: int | None, epoch: int, key: str) -> np.random.Generator:
    """Fresh entropy when unseeded; else a generator fixed by (seed, epoch, key), so a sample's
    window does not depend on which worker, rank or path (PyTorch or Ray) reads it."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def choose_window(num_frames: int, n_frames: int, rng: np.random.Generator,
                  reference: int | None = None) -> tuple[int, int]:
    """(first driving frame, reference frame): the window is placed uniformly in the clip and the
    reference uniformly among the frames outside it (any frame when the window fills the clip).
    A given `reference` stays, and the window is placed uniformly among the places that leave it
    out (any place when none does)."""
    if num_frames < n_frames:
        raise SampleSkipped("clip_too_short", f"{num_frames} frames < window of {n_frames}")
    if reference is not None:
        if not 0 <= reference < num_frames:
            raise SampleSkipped("bad_array", f"reference frame {reference} outside the clip's {num_frames} frames")
        starts = np.arange(num_frames - n_frames + 1)
        clear = starts[(starts > reference) | (starts + n_frames <= reference)]
        return int(rng.choice(clear if len(clear) else starts)), reference
    start = int(rng.integers(0, num_frames - n_frames + 1))
    outside = num_frames - n_frames
    if outside == 0:
        return start, int(rng.integers(0, num_frames))
    pick = int(rng.integers(0, outside))
    return start, pick if pick < start else pick + n_frames


def decode_frames(mp4: bytes, indices: Sequence[int]) -> tuple[np.ndarray, int]:
    """(len(indices), H, W, 3) uint8 RGB of the given frames (any order, repeats allowed) and the
    clip's frame count; a clip that does not decode is skipped with its reason."""
    try:
        return read_frames(mp4, indices)
    except TooFewFrames as exc:  # the arrays count more frames than the video has, whichever window was drawn
        raise SampleSkipped("frame_count_mismatch", str(exc)) from exc
    except VideoUnreadable as exc:
        raise SampleSkipped("video_undecodable", clipped(str(exc).splitlines()[0], 200)) from exc


def anchor_face_box(tracks: ClipTracks, frame: int) -> np.ndarray:
    """The face box a window's expression crops are anchored to (SPEC 2: the driving clip's frame-0
    detector box): the tracked face box of the window's first frame, or, in shards written before
    `boxes.npy` existed, the box of that frame's 68 landmarks."""
    if tracks.face_boxes is not None:
        return tracks.face_boxes[frame]
    landmarks = tracks.landmarks[frame]
    return np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)])


def _pixels(images: np.ndarray, low: float, high: float):
    """(N, H, W, 3) uint8 -> contiguous (N, 3, H, W) float32 torch tensor, 0 -> low, 255 -> high."""
    import torch

    out = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = out.to(torch.float32, memory_format=torch.contiguous_format)
    return out.mul_((high - low) / 255.0).add_(low)


def encoder_inputs(frames: np.ndarray, reference: np.ndarray, tracks: ClipTracks, window: np.ndarray,
                   ref_index: int, pixel_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Every tensor a HunyuanPortrait-style trainer feeds its encoders, channels first:
    VAE frames and reference in [-1, 1], DINO reference ImageNet-normalised, ArcFace face and the
    motion crops in [0, 1]. The DINO and motion inputs come from the functions the animator uses,
    so training sees what inference feeds the encoders."""
    import torch

    from portraitflow.models.hunyuan.conditions import expression_crops, image_tensor
    from portraitflow.models.hunyuan.pipeline import dino_input

    dtype = getattr(torch, pixel_dtype)
    kps = tracks.kps[window]
    try:
        buckets = window_buckets(kps)
    except ValueError as exc:
        raise SampleSkipped("degenerate_keypoints", str(exc)) from exc
    try:
        expression = expression_crops(frames, kps, anchor_face_box(tracks, window[0]), MOTION_CROP_SIZE)
    except ValueError as exc:
        raise SampleSkipped("degenerate_keypoints", str(exc)) from exc
    vae_frames, vae_reference = _pixels(frames, -1.0, 1.0), _pixels(reference[None], -1.0, 1.0)
    dino = dino_input(_pixels(reference[None], 0.0, 1.0))[0]
    try:
        face = align_arcface(reference, tracks.kps[ref_index])
    except ValueError as exc:
        raise SampleSkipped("degenerate_keypoints", str(exc)) from exc
    return {
        "frames": vae_frames.to(dtype).numpy(),
        "reference": vae_reference[0].to(dtype).numpy(),
        "reference_dino": dino.to(dtype).numpy(),
        "reference_face": _pixels(face[None], 0.0, 1.0)[0].to(dtype).numpy(),
        "head_crops": image_tensor(frames, MOTION_CROP_SIZE).to(dtype).numpy(),
        "expression_crops": expression.to(dtype).numpy(),
        "intensity_buckets": buckets,
        "identity": tracks.identity,
        "pose": tracks.pose[window],
        "landmarks": tracks.landmarks[window],
        "kps": kps,
    }


def smoothed(tracks: ClipTracks, sigma: float) -> ClipTracks:
    """Keypoints and landmarks smoothed in time as the animator smooths a driver's (a curated clip
    is one shot), so the intensity buckets and expression crops a trainer sees are those inference
    computes; 0 keeps them as curated."""
    if sigma <= 0:
        return tracks
    from scipy.ndimage import gaussian_filter1d

    return replace(tracks, kps=gaussian_filter1d(tracks.kps, sigma, axis=0, mode="nearest"),
                   landmarks=gaussian_filter1d(tracks.landmarks, sigma, axis=0, mode="nearest"))


def at_resolution(frames: np.ndarray, tracks: ClipTracks, resolution: int) -> tuple[np.ndarray, ClipTracks]:
    """Frames (N, S, S, 3) of a square crop resized to `resolution` with their pixel tracks scaled,
    so corpora curated at other `crop_size`s batch together at the size the model trains at."""
    size = frames.shape[2]
    if frames.shape[1] == frames.shape[2] == resolution:
        return frames, tracks
    import cv2

    interpolation = cv2.INTER_AREA if size > resolution else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(f, (resolution, resolution), interpolation=interpolation) for f in frames])
    scale = np.float32(resolution / size)
    boxes = None if tracks.face_boxes is None else tracks.face_boxes * scale
    return resized, replace(tracks, kps=tracks.kps * scale, landmarks=tracks.landmarks * scale, face_boxes=boxes)


def build_train_sample(sample: Mapping[str, Any], n_frames: int = 25, seed: int | None = None, epoch: int = 0,
                       pixel_dtype: str = "float32", resolution: int = 512, smooth_sigma: float = 0.0,
                       identity_dim: int | None = None, reference: str = "random",
                       identity_backend: str | None = None) -> dict[str, Any]:
    """A curated WebDataset sample (member name -> bytes) -> one training sample (numpy arrays).

    `reference` "curated" takes the clip's curated reference frame (`ref_frame` in its json:
    frontal, eyes open) as the identity image, "random" any frame outside the window. Raises
    SampleSkipped with a reason code for anything that cannot be trained on, including an identity
    embedding that is not `identity_dim` wide or not `identity_backend`'s (corpora curated with other
    face backends).
    """
    key = str(sample.get("__key__", ""))
    meta = sample_meta(sample)  # parsed once: digests, face backend, reference frame, rates
    check_digests(sample, meta, (*REQUIRED_MEMBERS, "boxes.npy"))  # what is decoded here
    rates = _clip_rates(meta, key)  # before decoding: a json that gives no frame rate is skipped as it stands
    tracks = parse_tracks(sample)
    if identity_dim is not None and len(tracks.identity) != identity_dim:
        raise SampleSkipped("identity_mismatch", f"identity has {len(tracks.identity)} dimensions, not {identity_dim}")
    if identity_backend is not None and (backend := meta.get("face_backend")) != identity_backend:
        raise SampleSkipped("identity_mismatch", f"identity embedded by the {backend!r} face backend, not {identity_backend!r}")
    tracks = smoothed(tracks, smooth_sigma)
    curated = _curated_reference(meta) if reference == "curated" else None
    start, ref_index = choose_window(tracks.num_frames, n_frames, sample_rng(seed, epoch, key), curated)
    window = np.arange(start, start + n_frames)
    decoded, video_frames = decode_frames(bytes(sample["mp4"]), np.append(window, ref_index))
    if video_frames != tracks.num_frames:
        raise SampleSkipped("frame_count_mismatch", f"video has {video_frames} frames, arrays {tracks.num_frames}")
    decoded, tracks = at_resolution(decoded, tracks, resolution)
    frames, reference = decoded[:-1], decoded[-1]
    out = encoder_inputs(frames, reference, tracks, window, ref_index, pixel_dtype)
    out.update(key=key, frame_indices=window, reference_index=np.int64(ref_index), **rates)
    return out


def sample_builder(cfg: TrainDataConfig, epoch: int) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """`build_train_sample` with the config's settings, as both loader paths run it."""
    return partial(build_train_sample, n_frames=cfg.n_frames, seed=cfg.seed, epoch=epoch, pixel_dtype=cfg.pixel_dtype,
                   resolution=cfg.resolution, smooth_sigma=cfg.smooth_sigma, identity_dim=cfg.identity_dim,
                   reference=cfg.reference, identity_backend=cfg.identity_backend)


def check_digests(sample: Mapping[str, Any], meta: Mapping[str, Any], names: Iterable[str] | None = None) -> None:
    """SampleSkipped ("damaged_member") for a member (of `names`, default all) whose bytes are not
    those curation wrote, by the SHA-256 its json (`meta`) records of each other member (samples
    curated before, or by other tools, record none). A damaged mp4 is not always an error to the
    decoder: one flipped byte of its sample table made decord crash the process (a segmentation
    fault), which no handler counts."""
    digests = meta.get("sha256")
    if not isinstance(digests, dict):
        return
    for name in digests if names is None else names:
        if name in sample and name in digests and hashlib.sha256(bytes(sample[name])).hexdigest() != digests[name]:
            raise SampleSkipped("damaged_member", f"{sample.get('__key__')}: {name} is not the file curation wrote "
                                "(its SHA-256 differs from the json's): the shard was damaged since")


def sample_meta(sample: Mapping[str, Any]) -> dict[str, Any]:
    """A curated sample's json as a dict; empty where it has none (samples from other tools).
    SampleSkipped ("bad_json") for one that is there but holds no JSON object: cut short or
    overwritten, it gave NaN rates and no digests without a word."""
    if not sample.get("json"):
        return {}
    try:
        meta = json.loads(bytes(sample["json"]))
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise SampleSkipped("bad_json", f"{sample.get('__key__')}: the json does not parse ({exc})") from exc
    if not isinstance(meta, dict):
        raise SampleSkipped("bad_json", f"{sample.get('__key__')}: the json holds no sample description")
    return meta


def _curated_reference(meta: Mapping[str, Any]) -> int:
    """The frame curation chose as the clip's reference (`ref_frame` in its json, `meta`)."""
    try:
        return int(meta["ref_frame"])
    except (KeyError, ValueError, TypeError) as exc:
        raise SampleSkipped("no_curated_reference", f"no curated reference frame (`ref_frame`) in the sample's json "
                            f"({exc!r}): curated by an earlier version? train_data.reference random takes any") from exc


def _clip_rates(meta: Mapping[str, Any], key: str) -> dict[str, np.float32]:
    """`fps`, the clip's frame rate, and `source_fps`, its source's: below `fps`, curation repeated
    frames to reach it, so a window holds a still every few frames (a 12-fps source: every other
    frame). From the sample's json, NaN where it does not say (`source_fps`: curated before it was
    recorded). Not what SVD's `added_time_ids` take: the release conditions on a constant 12.5
    (SPEC section 8). `meta` is the sample's json, `key` names it in a skip."""
    rates = {}
    for name in ("fps", "source_fps"):
        value = meta.get(name)
        if value is None:
            rates[name] = np.float32(np.nan)
            continue
        try:
            rate = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        except OverflowError:  # an integer past float's range
            rate = math.inf
        if not (math.isfinite(rate) and rate > 0):
            raise SampleSkipped("bad_json", f"{key}: `{name}` is {value!r}, no frame rate")
        rates[name] = np.float32(rate)
    return rates


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of training samples into a batch of torch tensors (keys stay a list).

    Dunder entries webdataset adds on the way (`__key__`, `__url__`) are left out."""
    import torch

    batch: dict[str, Any] = {"key": [s["key"] for s in samples]}
    for name in samples[0]:
        if name != "key" and not name.startswith("__"):
            batch[name] = torch.from_numpy(np.stack([np.asarray(s[name]) for s in samples]))
    return batch
