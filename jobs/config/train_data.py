"""Settings of the train data flow: curated shards into HunyuanPortrait-style training batches."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from portraitflow.jobs.config.fields import ConfigModel


class TrainDataConfig(ConfigModel):
    shards: list[str] = Field(
        default_factory=list,
        description="Shard sources: a curated output folder (its shard index), brace patterns "
        "(`out/shards/{000000..000009}.tar`), the index JSON the curation flow writes beside its shards, local "
        "paths or pyarrow filesystem URIs (s3://, gs://, hdfs://).",
    )
    n_frames: int = Field(25, ge=1, description="Consecutive driving frames per sample (SPEC: 25-frame motion chunks).")
    batch_size: int = Field(2, ge=1, description="Samples per batch, per rank.")
    drop_last: bool = Field(False, description="Drop each worker's last incomplete batch.")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank (0: decode in the trainer).")
    prefetch_factor: int = Field(2, ge=1, description="Batches each worker prepares ahead.")
    shuffle_buffer: int = Field(
        64, ge=0, description="Samples in each worker's shuffle buffer, held still encoded (about the shard bytes "
        "per sample: ~0.8 MB for a 10-s 512x512 clip), not decoded (~122 MB at 512, 25 frames, float32). 0: read order."
    )
    interleaved_shards: int = Field(
        4, ge=1, description="Shards each worker reads at once, a sample from each in turn, so the shuffle buffer and "
        "each batch mix clips of that many shards (curated shards are packed in key order: few sources each). "
        "1: one shard after another."
    )
    shard_shuffle: bool = Field(
        True, description="Permute the shard list every epoch, seeded by (seed, epoch) and the same on every rank, "
        "before ranks and workers split it (the Ray path: before its shard tasks take it). "
        "false: index order, each rank and worker reading the same shards every epoch."
    )
    resampled: bool = Field(
        False, description="Draw shards with replacement, endlessly (epoch-less training); epochs are "
        "`samples_per_epoch` long. PyTorch path only: the Ray path refuses it."
    )
    samples_per_epoch: int = Field(
        10_000, ge=1, description="Resampled mode: samples per rank in one pass of the loader."
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="Deterministic mode (evaluation): shard order, shuffle and every window and reference are "
        "fixed by (seed, epoch, sample key). Empty: the loader draws a seed for the order when it is built (its "
        "`state_dict` keeps it, so a resumed run goes on in the same order) and windows are fresh every time.",
    )
    reference: Literal["random", "curated"] = Field(
        "random", description="The identity image of a sample: `random`, a frame outside the driving window, new "
        "each epoch (references in every pose and expression of the clip, blinks included); `curated`, the clip's "
        "curated reference (`ref_frame`: its most frontal frame with open eyes), the window placed to leave it out."
    )
    pin_memory: bool = Field(False, description="Pin batches in page-locked memory for faster host-to-GPU copies.")
    resolution: int = Field(
        512, ge=64, multiple_of=64, description="Side of the frames and reference in a batch (SPEC: 512; a multiple of 64, "
        "which the VAE's 8x and the UNet's three halvings need); clips curated at another "
        "`crop_size` are resized to it, their keypoints, landmarks and boxes scaled."
    )
    smooth_sigma: float = Field(
        0.0, ge=0, description="Gaussian smoothing in time (frames) of the keypoints and landmarks. 0: as curated, "
        "per frame, as the release trains and as `animate` feeds HunyuanPortrait its intensity buckets and expression "
        "crops (smoothed points lowered the buckets by about 40%)."
    )
    identity_dim: int | None = Field(
        None, ge=1, description="Width of the curation identity embedding (`identity`) a batch holds; samples of "
        "another width are skipped as `identity_mismatch`. Empty: no check, for a corpus curated with one backend."
    )
    identity_backend: str | None = Field(
        None, description="Face backend whose identity embeddings a batch holds (`face_backend` in a sample's json); "
        "samples curated with another are skipped as `identity_mismatch`. Embeddings of two backends can share a width "
        "and not a space (the default opencv backend's and the small insightface pack's are both 128-d), which "
        "`identity_dim` cannot tell apart. Empty: no check."
    )
    pixel_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the pixel tensors (frames, reference, crops); float16 halves transfer."
    )

    @field_validator("shard_shuffle", mode="before")
    @classmethod
    def _shard_shuffle_was_a_buffer_size(cls, value: object) -> object:
        """Earlier configs gave a shard shuffle buffer's size: any size above 0 shuffled, as this does."""
        return value > 0 if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="before")
    @classmethod
    def _removed_settings(cls, values: object) -> object:
        """Settings earlier versions had, dropped with a warning so their configs still load."""
        if isinstance(values, dict) and "ray_max_errored_blocks" in values:
            import warnings

            values = {k: v for k, v in values.items() if k != "ray_max_errored_blocks"}
            warnings.warn("train_data.ray_max_errored_blocks is gone and ignored: the Ray path now skips and counts "
                          "bad samples and broken shards as the PyTorch path does, and a bug fails the epoch", stacklevel=2)
        return values

    @model_validator(mode="after")
    def _resampled_draws_are_random(self) -> "TrainDataConfig":
        if self.resampled and self.seed is not None:
            raise ValueError("train_data.resampled draws shards at random by design; leave seed empty with it")
        return self
