"""Settings of the curate flow."""
from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from portraitflow.jobs.config.fields import ConfigModel, OPERATIONAL


class CurateConfig(ConfigModel):

    # decoding
    fps: float = Field(
        25.0, gt=0, le=240, description="Frame rate every input is resampled to (clips, arrays and mp4s use it)."
    )
    chunk_frames: int = Field(
        64, ge=1, json_schema_extra=OPERATIONAL, description="Frames decoded at once; memory depends on this, not on video length. Results do "
        "not, so it may change when resuming an output folder. Renders decode full-resolution frames in "
        "order, at most 128 MiB of them at once (21 of 1080p, 5 of 4K)."
    )
    analysis_max_side: int = Field(
        640, ge=0,
        description="Longer side, in px, frames are scaled to while decoding for shots and faces (0: native).",
    )
    # shots
    shot_content_threshold: float = Field(
        27.0, ge=0, description="PySceneDetect ContentDetector threshold (HSV change)."
    )
    shot_histogram_threshold: float = Field(
        0.1, ge=0, description="PySceneDetect HistogramDetector threshold; catches cuts between similar-looking scenes."
    )
    shot_scan_side: int = Field(128, ge=16, description="Side, in px, frames are scaled to for shot detection.")
    shot_hash_threshold: float = Field(
        0.25, ge=0, le=1,
        description="A HistogramDetector cut counts only where PySceneDetect's HashDetector (a perceptual hash, "
        "blind to brightness) also changes by this fraction of its bits: exposure steps in dim footage move a "
        "dark frame's histogram like a cut. 0: every histogram cut counts, as before this setting existed.",
    )
    # faces and tracking
    detect_every: int = Field(
        2, ge=1, description="Run the face detector on every Nth frame; track and interpolate between."
    )
    track_iou: float = Field(0.3, ge=0, le=1, description="Minimum box IoU for a detection to continue a track.")
    track_max_gap: int = Field(3, ge=0, description="Detections a track may miss before it ends (short occlusions).")
    secondary_face_ratio: float = Field(
        0.35, gt=0, le=1,
        description="A second face counts (-> `multiple_faces`) when its side is at least this fraction of the main "
        "face's; smaller background faces are ignored.",
    )
    # quality filters (reason codes in docs/curation.md)
    min_face_px: int = Field(128, ge=0, description="`face_too_small`: minimum median face side in source pixels.")
    min_resolution: int = Field(
        256, ge=0, description="`low_resolution`: minimum shorter side of the source video in px."
    )
    min_source_fps: float = Field(
        0.0, ge=0, description="`low_frame_rate`: minimum frame rate of the source video (frames/s); a slower source "
        "reaches `fps` only by repeating frames (10 fps at 25: 60% repeats), which teaches a video model to stutter. "
        "0: any (a corpus for 25-fps training might take 20)."
    )
    min_sharpness: float = Field(
        80.0, ge=0, description="`too_blurry`: minimum median variance of the Laplacian of the face box (grey, 64x64)."
    )
    min_clip_seconds: float = Field(2.0, gt=0, description="`too_short`: clips shorter than this are rejected.")
    max_clip_seconds: float = Field(10.0, gt=0, description="Long shots are cut into clips of at most this length.")
    max_abs_yaw: float = Field(45.0, ge=0, description="`extreme_pose`: maximum median |yaw| in degrees.")
    max_abs_pitch: float = Field(30.0, ge=0, description="`extreme_pose`: maximum median |pitch| in degrees.")
    min_motion: float = Field(
        0.001, ge=0, description="`too_static`: minimum mean motion intensity (speed of the landmarks smoothed in "
        "time / face size per frame). On the shared media a still frame with grain reads 0.0003-0.0007, real "
        "talking clips 0.0014-0.016 (docs/curation.md)."
    )
    max_motion: float = Field(
        0.08, gt=0, description="`too_shaky`: maximum mean `shake` (speed of the raw landmarks / face size per "
        "frame: motion, the fit's jitter and a shaking camera's; real clips of the shared media read 0.0042-0.027)."
    )
    min_face_frames_ratio: float = Field(
        0.9, ge=0, le=1, description="`no_face`: fraction of a clip's frames the main track must cover."
    )
    # identity
    identity_samples: int = Field(8, ge=1, description="Fewest frames embedded per clip for identity checks.")
    identity_sample_seconds: float = Field(
        0.5, gt=0, description="About the longest gap between a clip's embedded frames (each moved to the nearest "
        "detected frame): another person on screen this long inside a clip is seen (with 8 samples alone, a second "
        "of another person fell between two).",
    )
    identity_switch_margin_seconds: float = Field(
        0.5, ge=0, description="Seconds cut out on each side of an identity switch with the frames between the two "
        "people's samples (`identity_switch`): the shot detector finds hard cuts, so a switch inside a shot is a "
        "dissolve or a fade, whose frames blend the two faces (a 1-s dissolve left 10 frames of up to 40% of the "
        "other person in the clip before it).",
    )
    identity_switch_similarity: float | None = Field(
        None, ge=-1, le=1,
        description="Cosine below which two frames of a clip are different people; empty: the backend's threshold.",
    )
    allow_dir: str | None = Field(
        None, description="Folder of photos of allowed identities (`identity_not_allowed`); a relative path is taken "
        "from the working directory the config is read in.",
    )
    deny_dir: str | None = Field(
        None, description="Folder of photos of denied identities (`identity_denied`); a relative path is taken from "
        "the working directory the config is read in.",
    )
    max_clips_per_identity: int = Field(
        0, ge=0, description="`identity_over_cap`: clips kept per identity cluster (0: no cap)."
    )
    duplicate_similarity: float = Field(
        0.9, ge=-1, le=1,
        description="`duplicate`: a clip of a kept clip's identity whose footage signature (how its frames' 16x16 grey "
        "thumbnails change over time) is this close (cosine) to that clip's. Re-encodes of one clip score about 0.95-0.99, "
        "other takes below 0.4.",
    )
    duplicate_overlap_share: float = Field(
        0.5, gt=0, le=1,
        description="`partial_duplicate`: a clip of a kept clip's identity whose footage found in the kept clips of "
        "that identity (together) is at least this share of it (a clip holding the first half of a kept one, a "
        "re-upload trimmed at either end: 0.92-1.0 on the shared media; an original curated after its kept excerpt "
        "holds less and is kept, its own footage with it). Footage is matched on 2-s windows of the thumbnails.",
    )
    duplicate_overlap_seconds: float = Field(
        0.0, ge=0,
        description="`partial_duplicate` also when the footage found in kept clips lasts at least this many seconds in "
        "all, whatever share of the clip it is (0: the share alone decides).",
    )
    duplicate_mirrored: bool = Field(
        True,
        description="`duplicate` and `partial_duplicate` also for a clip whose mirror image is (or shares footage "
        "with) a kept clip of its identity: a flipped re-upload. Off, mirrored copies are kept (as a different "
        "picture). On the shared media no mirrored pair of clips that share no footage came near a threshold (at "
        "most 0.67 per window, 0.19 whole).",
    )
    duplicate_window_similarity: float = Field(
        0.9, ge=-1, le=1,
        description="Cosine at which two 2-s windows of thumbnails count as the same footage for "
        "`partial_duplicate`. A re-encode's windows score 0.96-0.99; windows of footage not shared at most 0.86 on the "
        "shared media (other stretches of a 10-fps source, whose repeated frames look alike).",
    )
    duplicate_keep_unique: bool = Field(
        True,
        description="A `partial_duplicate`'s footage found in no kept clip, each stretch of it lasting "
        "`min_clip_seconds` (less half a second where it borders the footage found), is kept as a clip of its own, "
        "decided as any clip (its row's `cut_from` names the clip it was cut from). Off, a partial duplicate is "
        "rejected whole.",
    )
    # crops and shards
    crop_size: int = Field(
        512, ge=16, le=4096, description="Side of the square crops, in px; even, as H.264 in yuv420p needs even sides."
    )
    crf: int = Field(
        18, ge=0, le=51, description="H.264 constant rate factor of the crops (0 is lossless: the High 4:4:4 "
        "Predictive profile, which FFmpeg and decord decode but browsers do not play).",
    )
    keep_audio: bool = Field(True, description="Mux the source's audio of each clip's time range into its mp4 (AAC).")
    keyframe_interval: int = Field(
        25, ge=0,
        description="Frames between keyframes of the crops: training loaders seek into 25-frame windows, so "
        "a short interval bounds what they decode (larger files; 0 keeps x264's default of 250).",
    )
    shard_max_samples: int = Field(100, ge=1, json_schema_extra=OPERATIONAL, description="Samples per shard.")
    shard_max_bytes: int = Field(
        1 << 30, ge=1, json_schema_extra=OPERATIONAL, description="Bytes per shard; a shard ends at whichever limit comes first."
    )
    shard_pack_workers: int = Field(
        0, ge=0, json_schema_extra=OPERATIONAL, description="Processes writing shards at once on the driver, once "
        "every input is done (0: one per CPU the driver may use, at most 8); below 2,000 samples to pack the driver "
        "writes them alone. The shards are the same, byte for byte, whatever the number. Each writer runs up to "
        "two shards ahead of those moved into place: leave room for 2 x workers x shard_max_bytes on the shards' disk."
    )
    # resources
    inputs_per_task: int = Field(
        0, ge=0, json_schema_extra=OPERATIONAL, description="Inputs a curation task holds (0: one each up to 1,000 "
        "inputs, then at most 16, at least 1,000 tasks): each task costs the driver about 20 ms whatever it holds, "
        "~6 h at a million inputs one a task. A worker that crashes retries its task's other inputs too: they never "
        "count towards a quarantine, and a local one finishes quickly from its saved scan (a remote one is fetched "
        "again); a task lost for good fails all of its inputs, which the next run curates again."
    )
    face_actors: int = Field(
        0, ge=0,
        json_schema_extra=OPERATIONAL, description="Curation actors at most; each holds the face models, scans an input and renders the clips "
        "it kept (0: one per `actor_cpus` CPUs on a local Ray; on a cluster, a pool that grows from one "
        "actor as nodes are added)."
    )
    actor_cpus: int = Field(
        1, ge=1, json_schema_extra=OPERATIONAL, description="CPUs each curation actor reserves; OpenCV (unless `face.num_threads`), ONNX Runtime and "
        "x264 use that many threads in it."
    )
    experiment: str = Field("portraitflow-curate", min_length=1, json_schema_extra=OPERATIONAL, description="MLflow experiment of curate runs.")
    progress_bars: bool = Field(True, json_schema_extra=OPERATIONAL, description="Show Ray Data progress bars.")

    def same_person_similarity(self, backend_threshold: float) -> float:
        """The cosine from which two faces are one person: within a clip (below it, `identity_switch`),
        against the galleries and across the corpus: `identity_switch_similarity`, else the face
        backend's `same_person_threshold`."""
        return backend_threshold if self.identity_switch_similarity is None else self.identity_switch_similarity

    @model_validator(mode="after")
    def _clip_lengths(self) -> CurateConfig:
        if self.max_clip_seconds < self.min_clip_seconds:
            raise ValueError(f"max_clip_seconds ({self.max_clip_seconds}) is below "
                             f"min_clip_seconds ({self.min_clip_seconds})")
        return self

    @field_validator("allow_dir", "deny_dir")
    @classmethod
    def _absolute_gallery(cls, folder: str | None) -> str | None:
        """Resolved where the config is read (the driver): a worker, given the config as read, loads
        the folder the driver checked, whatever its own working directory."""
        return absolute_folder(folder) if folder else None

    @field_validator("crop_size")
    @classmethod
    def _even_crop(cls, size: int) -> int:
        """An odd side would be cut to the even one below by the encoder while the sample's
        coordinates kept the odd one."""
        if size % 2:
            raise ValueError(f"crop_size ({size}) must be even: H.264 in yuv420p has no odd sides")
        return size


def absolute_folder(folder: str) -> str:
    """`folder` as an absolute path (`~` expanded), without resolving links: the same string again
    wherever it is read once absolute."""
    return os.path.abspath(os.path.expanduser(folder))
