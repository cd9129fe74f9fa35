"""The scan file of an input (`{scan_dir}/{input_key}.npz`): how a scan is fingerprinted, saved and read back.

A scan is reused while its fingerprint (the settings, gallery photos and face model files it
depends on) and its source (the file it was made of) are unchanged, so a rerun scans only what
changed; rendering and the corpus decisions read the kept clips' arrays back from it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.jobs.config.fields import operational
from portraitflow.models.face.model_files import file_sha256
from portraitflow.operators.atomic import atomic_write, reading
from portraitflow.operators.identity import gallery_photos
from portraitflow.operators.inputs import clip_key
from portraitflow.operators.ledger import file_stat

if TYPE_CHECKING:
    from portraitflow.operators.face_scan import Candidate

#: bumped when a stored measure changes meaning (2: `yaw`/`pitch` are median absolute angles;
#: 3: `signature` fingerprints the frames, not the keypoints; the pose fits rigid points, and
#: `keypoint_yaw` rejects profiles; 4: kept clips hold their `thumbnails`, which the partial-duplicate
#: check compares: a scan without them is made again; 5: the parts of a clip split at an identity
#: switch are measured and filtered on their own frames: `sharpness` and the first-pass measures
#: were the whole clip's; and a frame coded after an mp4 edit list's end is off the timeline;
#: 6: `motion` is the speed of landmarks smoothed in time (raw, it measured jitter), and `ref_index`
#: is a detected, eyes-open frame inside the image, not just the most frontal one;
#: 7: `pose` is fitted on the face centred in its square crop, as generation and evaluation fit it, and
#: on profiles takes the keypoints' yaw; `extreme_pose` compares `keypoint_yaw` on the landmark fit's
#: scale and rejects a clip mostly in profile (`profile_share`);
#: 8: frames where the face leaves the clip's crop are cut out (`face_leaves_crop`, `face_outside_crop`),
#: identity samples are embedded on detected frames only, and a measure of no detected frame is NaN, not 0)
#: 9: identity samples at most `identity_sample_seconds` apart, the reference frame one of them, a
#: switch away and back cut into its parts, and a clip denied when any sample (not only their mean)
#: is a denied person;
#: 10: HDR and BT.2020 video read in SDR BT.709 colours, the frames after a clip's last whole window
#: bucketed over its last 25, and samples' landmarks, pose and intensity fitted again on fine crops
SCAN_MEASURES_VERSION = 10
#: curate fields a scan does not depend on (resources, decoding chunk size, naming, the stages
#: after it); changing them keeps earlier scans valid.
_NOT_IN_SCAN = operational(CurateConfig) | {
    "crop_size", "crf", "keep_audio", "keyframe_interval", "max_clips_per_identity", "duplicate_similarity",
    "duplicate_overlap_share", "duplicate_overlap_seconds", "duplicate_window_similarity", "duplicate_mirrored",
    "duplicate_keep_unique"}


#: the settings naming a gallery folder, whose photos decide `identity_not_allowed` / `identity_denied`
GALLERY_SETTINGS = ("allow_dir", "deny_dir")
GALLERY_DIGEST_PREFIX = "sha256:"


def scan_fingerprint(cfg: PortraitFlowConfig) -> str:
    """A hash of every setting a scan depends on, the galleries by what they hold
    (`gallery_digests`) and the face models by their files (`model_digests`); a rerun with other
    settings, gallery photos or model files scans again."""
    from portraitflow.models.face.factory import model_digests

    curate = cfg.curate.model_dump(exclude=_NOT_IN_SCAN) | gallery_digests(cfg.curate)
    relevant = {"face": cfg.face.result_settings(), "curate": curate, "measures": SCAN_MEASURES_VERSION,
                "models": model_digests(cfg.face)}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def gallery_digests(cfg: CurateConfig) -> dict[str, str | None]:
    """Each gallery setting as the digest of the photos its folder holds (None when unset): the
    decisions depend on those, not on where the folder is, and a path would stay the same while
    someone adds a person's photo to it."""
    folders = {name: getattr(cfg, name) for name in GALLERY_SETTINGS}
    return {name: gallery_digest(folder) if folder else None for name, folder in folders.items()}


def gallery_listing(cfg: CurateConfig) -> dict[str, dict[str, Any]]:
    """Each set gallery's folder and photo names, recorded beside the settings (not compared: the
    digest is), so a refusal of a changed gallery can say which photos the corpus was curated with."""
    return {name: {"path": str(Path(folder).resolve()),
                   "photos": [photo.relative_to(folder).as_posix() for photo in gallery_photos(folder)]}
            for name in GALLERY_SETTINGS if (folder := getattr(cfg, name))}


def gallery_digest(folder: str) -> str:
    """`sha256:` of the sorted hashes of the bytes of the photos `load_gallery` embeds (every
    `gallery_photos`): names and places do not count, content does. A gallery is a few photos,
    which loading it reads whole anyway. A photo that cannot be read counts as absent, as the
    gallery skips it."""
    hashes = []
    for photo in gallery_photos(folder):
        with contextlib.suppress(OSError):  # a folder named like a photo, a broken link, no permission
            hashes.append(file_sha256(photo))
    return GALLERY_DIGEST_PREFIX + hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


def source_identity(path: str, row: dict[str, Any]) -> dict[str, Any]:
    """What tells the file a scan was made of from another put at its path later: its size and
    modification time (a remote object's, which its local copy keeps) and what the probe found."""
    return {**file_stat(path), "width": row["width"], "height": row["height"], "fps": row["src_fps"],
            "frames": round(row["duration_s"] * row["src_fps"])}


def save_scan(path: Path, meta: dict[str, Any], candidates: list[Candidate]) -> None:
    """One npz per input: `meta` (JSON: clips, decisions, measures) and the kept clips' arrays."""
    clips = [{"start": c.start, "end": c.end, "reason": c.reason, "measures": c.measures} for c in candidates]
    arrays = {f"c{i}_{name}": value for i, c in enumerate(candidates) for name, value in c.arrays.items()}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(dict(meta, clips=clips))), **arrays)
    atomic_write(path, buffer.getvalue())


def load_scan_meta(path: Path) -> dict[str, Any]:
    """The scan's JSON; `UnreadableFile` when it is missing or damaged."""
    with reading(path), np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def scan_path(scan_dir: Path, input_key: str) -> Path:
    """An input's scan file: one per input key, so a rerun finds it."""
    return Path(scan_dir) / f"{input_key}.npz"


def scan_clips(path: Path, input_key: str, fps: float) -> list[dict[str, Any]]:
    """The candidate clips of a scan file in time order, each with its sample key, its index in the
    file, the face backend and that backend's same-person threshold; `UnreadableFile` when the
    file is missing or damaged."""
    meta = load_scan_meta(path)
    with reading(path):
        return [dict(clip, key=clip_key(input_key, clip["start"] / fps, clip["end"] / fps), index=index,
                 face_backend=meta["face_backend"], same_person=meta["same_person"])
            for index, clip in enumerate(meta["clips"])]


def load_clip_arrays(path: Path, index: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    prefix = f"c{index}_"
    with np.load(path, allow_pickle=False) as data:
        return {k[len(prefix):]: data[k] for k in data.files
                if k.startswith(prefix) and (names is None or k[len(prefix):] in names)}
