"""The training loader: curated shards in, SPEC-conformant batches out, on both paths."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.models.hunyuan.buckets import head_exp_motion_buckets
from portraitflow.operators.ray_train_samples import RayCollate
from portraitflow.operators.shard_source import expand_shards
from portraitflow.operators.shards import npy_bytes
from portraitflow.operators.train_sample import SampleSkipped, anchor_face_box, build_train_sample, parse_tracks
from portraitflow.pipelines.train_data import TrainLoader, ray_train_dataset
from synthetic_shards import clip_members, frame_code, write_dataset, write_shard

CLIP_FRAMES = 36


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("curated")
    return out, write_dataset(out, shards=4, per_shard=2, num_frames=CLIP_FRAMES)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, dataset) -> tuple[str, dict[str, int]]:
    """One intact shard, one with three damaged samples and one good, one cut short mid-sample."""
    out = tmp_path_factory.mktemp("damaged")
    intact = dataset[0] / "shards" / "000000.tar"
    members = {f"bad{i}": clip_members(CLIP_FRAMES, 100 + i, out / "work") for i in range(4)}
    members["bad0"]["mp4"] = np.random.default_rng(0).bytes(4000)
    members["bad1"]["kps.npy"] = members["bad1"]["kps.npy"][:40]
    del members["bad2"]["id.npy"]
    write_shard(out / "shards" / "000001.tar", members)
    write_shard(out / "whole.tar", {f"cut{i}": clip_members(CLIP_FRAMES, 200 + i, out / "work") for i in range(2)})
    whole = (out / "whole.tar").read_bytes()
    cut_at = whole.index(b"cut1.mp4") + 2048  # inside the second sample's video
    (out / "shards" / "000002.tar").write_bytes(whole[:cut_at])
    (out / "shards" / "000000.tar").write_bytes(intact.read_bytes())
    expected_good = {"synthetic0000", "synthetic0001", "bad3", "cut0"}
    return str(out / "shards" / "{000000..000002}.tar"), expected_good


def _config(dataset, **overrides) -> TrainDataConfig:
    values = dict(shards=[str(dataset[0] / "index.wids.json")], n_frames=4, batch_size=2, num_workers=0)
    values.update(overrides)
    return TrainDataConfig(**values)


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def _shard_arrays(dataset, key: str) -> dict[str, np.ndarray]:
    for shard in sorted((dataset[0] / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            names = [n for n in tar.getnames() if n.startswith(key + ".") and n.endswith(".npy")]
            if names:
                return {n[len(key) + 1:]: np.load(io.BytesIO(tar.extractfile(n).read())) for n in names}
    raise KeyError(key)


def test_batches_have_the_shapes_dtypes_and_ranges_of_the_spec(dataset) -> None:
    batch = next(iter(TrainLoader(_config(dataset, n_frames=25, seed=0))))
    b, t = 2, 25
    shapes = {
        "frames": (b, t, 3, 512, 512), "reference": (b, 3, 512, 512), "reference_dino": (b, 3, 224, 224),
        "reference_face": (b, 3, 112, 112), "expression_crops": (b, t, 3, 256, 256), "head_crops": (b, t, 3, 256, 256),
        "intensity_buckets": (b, 1, 2), "identity": (b, 128), "pose": (b, t, 3), "landmarks": (b, t, 68, 2),
        "kps": (b, t, 5, 2), "frame_indices": (b, t), "reference_index": (b,), "fps": (b,),
    }
    assert {name: tuple(batch[name].shape) for name in shapes} == shapes
    assert len(batch["key"]) == b
    for name in ("frames", "reference", "reference_dino", "reference_face", "expression_crops", "head_crops"):
        assert batch[name].dtype == torch.float32
    assert batch["intensity_buckets"].dtype == torch.int32
    assert batch["fps"].tolist() == [25.0, 25.0]  # the curated rate, from each sample's json
    assert batch["source_fps"].tolist() == [25.0, 25.0]  # its source's: below fps, frames were repeated
    # VAE inputs in [-1, 1]; ArcFace and motion-encoder inputs in [0, 1]; DINO ImageNet-normalised
    for name in ("frames", "reference"):
        assert batch[name].min() >= -1 and batch[name].max() <= 1 and batch[name].min() < -0.5
    for name in ("reference_face", "expression_crops", "head_crops"):
        assert batch[name].min() >= 0 and batch[name].max() <= 1
    unit_dino = batch["reference_dino"] * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor(
        [0.485, 0.456, 0.406])[:, None, None]
    assert unit_dino.min() > -1e-5 and unit_dino.max() < 1 + 1e-5
    assert abs(unit_dino.mean() - (batch["reference"].mean() + 1) / 2) < 0.01

    for i, key in enumerate(batch["key"]):
        window, ref = batch["frame_indices"][i].numpy(), int(batch["reference_index"][i])
        assert np.array_equal(window, np.arange(window[0], window[0] + t)) and window[-1] < CLIP_FRAMES
        assert ref not in window  # the reference comes from another time of the clip
        pixels = ((batch["frames"][i].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
        assert np.array_equal(frame_code(pixels), window)  # the decoded frames are the claimed ones
        ref_pixels = ((batch["reference"][i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        assert frame_code(ref_pixels[None])[0] == ref
        arrays = _shard_arrays(dataset, key)
        kps = arrays["kps.npy"]  # per frame, as curated: as the release trains and HunyuanPortrait infers
        assert np.allclose(batch["kps"][i].numpy(), kps[window])
        assert np.allclose(batch["pose"][i].numpy(), arrays["pose.npy"][window])
        assert np.allclose(batch["identity"][i].numpy(), arrays["id.npy"])
        assert tuple(batch["intensity_buckets"][i, 0].tolist()) == head_exp_motion_buckets(kps[window])
        # the expression crop is the face; the head crop is the whole 512 crop scaled to 256
        expression, head = batch["expression_crops"][i, 0], batch["head_crops"][i, 0]
        skin = expression.flatten(1).median(dim=1).values[:, None, None]
        def skin_fraction(images):
            return ((images - skin).abs().amax(dim=0) < 0.05).float().mean()
        assert skin_fraction(expression) > 0.6 and 0.02 < skin_fraction(head) < 0.2
        halved = (torch.nn.functional.avg_pool2d(batch["frames"][i], 2) + 1) / 2  # off only at edges (antialiased)
        assert (batch["head_crops"][i] - halved).abs().mean() < 0.005
        # ArcFace alignment puts the drawn eyes (dark) on the template's eye positions
        face = batch["reference_face"][i]
        assert face[:, 52, 38].max() < 0.25 and face[:, 52, 73].max() < 0.25 and face[:, 75, 56].min() > 0.3


def test_a_clip_as_long_as_the_window_takes_its_reference_inside_it(tmp_path) -> None:
    sample = dict(clip_members(6, seed=5, workdir=tmp_path), __key__="short")
    out = build_train_sample(sample, n_frames=6, seed=0)
    assert out["frame_indices"].tolist() == list(range(6)) and 0 <= out["reference_index"] < 6
    reference = ((out["reference"].transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    assert frame_code(reference[None])[0] == out["reference_index"]
    with pytest.raises(SampleSkipped, match="clip_too_short"):
        build_train_sample(sample, n_frames=7)


def test_the_curated_reference_is_the_identity_image_and_the_window_leaves_it_out(tmp_path) -> None:
    """`reference: curated` takes curation's `ref_frame` (frontal, eyes open), never a blink drawn at random."""
    sample = dict(clip_members(12, seed=6, workdir=tmp_path), __key__="ref")
    sample["json"] = json.dumps(dict(json.loads(sample["json"]), ref_frame=5)).encode()
    for seed in range(6):
        out = build_train_sample(sample, n_frames=4, seed=seed, reference="curated")
        assert out["reference_index"] == 5 and 5 not in out["frame_indices"].tolist()
        reference = ((out["reference"].transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
        assert frame_code(reference[None])[0] == 5
    starts = {int(build_train_sample(sample, n_frames=4, seed=seed, reference="curated")["frame_indices"][0])
              for seed in range(40)}
    assert starts == {0, 1, 6, 7, 8}  # every place that leaves frame 5 out
    assert build_train_sample(sample, n_frames=12, seed=0, reference="curated")["reference_index"] == 5  # no place does
    from portraitflow.operators.train_sample import sample_builder
    assert sample_builder(TrainDataConfig(reference="curated"), epoch=0).keywords["reference"] == "curated"
    del sample["json"]
    with pytest.raises(SampleSkipped, match="no curated reference") as skipped:
        build_train_sample(sample, n_frames=4, seed=0, reference="curated")
    assert skipped.value.reason == "no_curated_reference"


def test_clips_curated_at_another_crop_size_batch_at_the_training_resolution(tmp_path) -> None:
    sample = dict(clip_members(8, seed=3, workdir=tmp_path), __key__="crop")
    full = build_train_sample(sample, n_frames=4, seed=0)
    half = build_train_sample(sample, n_frames=4, seed=0, resolution=256)
    assert half["frames"].shape == (4, 3, 256, 256) and half["reference"].shape == (3, 256, 256)
    assert np.allclose(half["kps"], full["kps"] / 2) and np.allclose(half["landmarks"], full["landmarks"] / 2)
    assert np.array_equal(half["intensity_buckets"], full["intensity_buckets"])  # scale-free, as SPEC defines them
    assert np.abs(half["reference_face"] - full["reference_face"]).mean() < 0.03  # the same aligned face
    raw = parse_tracks(sample).kps
    assert np.allclose(full["kps"], raw[full["frame_indices"]])  # per frame by default, as the release trains
    smoothed = build_train_sample(sample, n_frames=4, seed=0, smooth_sigma=0.8)
    assert np.allclose(smoothed["kps"], gaussian_filter1d(raw, 0.8, axis=0, mode="nearest")[full["frame_indices"]])


def test_an_identity_of_another_width_is_skipped_when_a_width_is_set(tmp_path) -> None:
    sample = dict(clip_members(6, seed=4, workdir=tmp_path), __key__="wide", **{"id.npy": npy_bytes(np.ones(512, np.float32))})
    assert build_train_sample(sample, n_frames=4)["identity"].shape == (512,)
    assert build_train_sample(sample, n_frames=4, identity_dim=512)["identity"].shape == (512,)
    with pytest.raises(SampleSkipped, match="identity_mismatch"):
        build_train_sample(sample, n_frames=4, identity_dim=128)


def test_an_identity_of_another_face_backend_is_skipped_when_a_backend_is_set(tmp_path) -> None:
    """The opencv backend and the small insightface pack both embed in 128 dimensions: a loader over
    corpora of both batched two unrelated spaces, `identity_dim` 128 passing both."""
    sample = dict(clip_members(6, seed=4, workdir=tmp_path), __key__="other")  # json: face_backend "synthetic"
    assert build_train_sample(sample, n_frames=4, identity_backend="synthetic")["identity"].shape == (128,)
    with pytest.raises(SampleSkipped, match="identity_mismatch.*'synthetic' face backend, not 'opencv'"):
        build_train_sample(sample, n_frames=4, identity_dim=128, identity_backend="opencv")


def test_expression_anchor_is_the_tracked_face_box_when_the_shard_has_one(tmp_path) -> None:
    sample = dict(clip_members(6, seed=1, workdir=tmp_path), __key__="boxes")
    older = parse_tracks(sample)
    marks = older.landmarks[2]
    assert older.face_boxes is None  # shards written before boxes.npy: the landmark box stands in
    assert np.array_equal(anchor_face_box(older, 2), np.concatenate([marks.min(axis=0), marks.max(axis=0)]))
    boxes = np.tile(np.float32([100, 90, 400, 420]), (6, 1)) + np.arange(6, dtype=np.float32)[:, None]
    sample["boxes.npy"] = npy_bytes(boxes)
    assert np.array_equal(anchor_face_box(parse_tracks(sample), 2), boxes[2])
    sample["boxes.npy"] = npy_bytes(boxes[:5])
    with pytest.raises(SampleSkipped, match="frame_count_mismatch"):
        parse_tracks(sample)


def test_arrays_longer_than_the_video_are_a_frame_count_mismatch_whatever_the_window(tmp_path) -> None:
    """Windows past the video's end read as `video_undecodable`, the others as the mismatch: one
    defect counted under two reasons, depending on the draw."""
    sample = dict(clip_members(40, seed=1, workdir=tmp_path / "long"), __key__="long")
    sample["mp4"] = clip_members(20, seed=1, workdir=tmp_path / "short")["mp4"]
    for seed in range(6):
        with pytest.raises(SampleSkipped, match="frame_count_mismatch"):
            build_train_sample(sample, n_frames=8, seed=seed)


def test_two_ranks_get_disjoint_samples(dataset, monkeypatch) -> None:
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(_keys(TrainLoader(_config(dataset, num_workers=2, batch_size=1))))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(dataset[1])  # each sample once, on exactly one rank
    monkeypatch.setenv("WORLD_SIZE", "5")  # 4 shards: a rank would get none, and fail at the end of its pass
    with pytest.raises(ValueError, match="4 shard\\(s\\) for 5 ranks"):
        TrainLoader(_config(dataset))
    assert TrainLoader(_config(dataset, resampled=True)).urls  # resampled ranks draw from every shard


def test_a_seeded_run_is_reproducible_and_epochs_differ(dataset) -> None:
    def run(seed: int, epoch: int = 0):
        loader = TrainLoader(_config(dataset, seed=seed, num_workers=2), epoch=epoch)
        batches = list(loader)
        keys = [k for batch in batches for k in batch["key"]]
        return keys, torch.cat([batch["frame_indices"] for batch in batches]), torch.cat([batch["frames"] for batch in batches])

    first, again, other_epoch = run(7), run(7), run(7, epoch=1)
    assert first[0] == again[0] and torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    assert sorted(first[0]) == sorted(dataset[1])
    assert first[0] != other_epoch[0] or not torch.equal(first[1], other_epoch[1])
    windows = dict(zip(first[0], first[1].tolist()))
    shifted = dict(zip(other_epoch[0], other_epoch[1].tolist()))
    assert any(windows[key] != shifted[key] for key in windows)


def test_corrupt_and_truncated_samples_are_skipped_and_counted(damaged) -> None:
    pattern, expected_good = damaged
    loader = TrainLoader(TrainDataConfig(shards=[pattern], n_frames=4, batch_size=2, num_workers=2))
    assert set(_keys(loader)) == expected_good
    skipped = loader.skipped
    assert skipped.pop("video_undecodable") == 1 and skipped.pop("bad_array") == 1
    assert skipped.pop("shard_unreadable") == 1  # the cut in cut1, counted once
    assert skipped.pop("missing_member") == 2  # bad2, and cut1 without the members after the cut
    assert skipped == {}


def _with_digests(members: dict[str, bytes]) -> dict[str, bytes]:
    """The members with the SHA-256 of each non-json member in the json, as curation writes them."""
    meta = json.loads(members["json"])
    meta["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items() if name != "json"}
    return {**members, "json": json.dumps(meta).encode()}


def _npy_header_replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    """An .npy whose header has `old` replaced by `new`, the header's padding taking up the
    difference, so its length and the data stay where they were."""
    header_end = data.index(b"\n")
    header = data[:header_end].replace(old, new)
    return header[:header_end].ljust(header_end) + data[header_end:]


@pytest.mark.parametrize(("damage", "reason"), [
    # one flipped byte of an mp4's sample table made decord crash the process: no handler could count it
    (lambda m: {**m, "mp4": m["mp4"][:1800] + bytes([m["mp4"][1800] ^ 0x3C]) + m["mp4"][1801:]}, "damaged_member"),
    (lambda m: {**m, "kps.npy": m["kps.npy"][:-1] + b"\x00"}, "damaged_member"),
    # without digests (samples from before them, or another tool's), header damage numpy raised as no ValueError
    (lambda m: {**m, "kps.npy": _npy_header_replaced(m["kps.npy"], b"{", b")")}, "bad_array"),  # SyntaxError
    (lambda m: {**m, "kps.npy": _npy_header_replaced(m["kps.npy"], b"'shape': (", b"'shape': (99999999999, ")},
     "bad_array"),  # asked numpy for terabytes
    (lambda m: {**m, "json": m["json"][:20]}, "bad_json"),  # cut short: NaN rates, no digests, no word
    (lambda m: {**m, "json": m["json"].replace(b'"fps": 25.0', b'"fps": "abc"')}, "bad_json"),
    (lambda m: {**m, "json": m["json"].replace(b'"fps": 25.0', b'"fps": 1' + b"0" * 400)}, "bad_json"),  # TypeError
    (lambda m: {**m, "json": b"[" * 200_000 + b"]" * 200_000}, "bad_json"),  # RecursionError stopped the epoch
    # forged, with digests signed again: finite, so they reached batches (a loss on 3e38 squared is NaN)
    (lambda m: {**m, "pose.npy": npy_bytes(np.full_like(np.load(io.BytesIO(m["pose.npy"])), -1e30))}, "bad_array"),
    (lambda m: {**m, "id.npy": npy_bytes(np.full(128, 3e38, np.float32))}, "bad_array"),
    (lambda m: {**m, "id.npy": npy_bytes(np.zeros(128, np.float32))}, "bad_array"),
    (lambda m: {**m, "pose.npy": _npy_header_replaced(m["pose.npy"], b"'shape': (", b"'shape': (True, ")},
     "bad_array"),  # a bool passes for an int in the header: TypeError in np.load
])
def test_damaged_members_and_descriptions_are_skipped_by_reason(tmp_path, damage, reason: str) -> None:
    members = clip_members(CLIP_FRAMES, 7, tmp_path)
    if reason == "damaged_member":
        members = _with_digests(members)
    build_train_sample({"__key__": "clip", **members}, n_frames=4, seed=0)  # whole, it trains
    with pytest.raises(SampleSkipped) as skipped:
        build_train_sample({"__key__": "clip", **damage(members)}, n_frames=4, seed=0)
    assert skipped.value.reason == reason, skipped.value


def _three_sample_shard(path: Path) -> bytes:
    write_shard(path, {f"s{i}": {"json": b"{}", "npy": bytes(600)} for i in range(3)})
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["cut_at_a_header", "cut_inside_a_header", "garbled_header", "cut_in_the_end_blocks"])
def test_a_shard_that_ends_at_a_broken_header_is_counted_unreadable_after_its_whole_samples(tmp_path, damage) -> None:
    """tarfile takes a header cut short or garbled for the archive's end: without the end-of-archive
    check the rest of the shard would vanish uncounted. The samples before the break still come."""
    from portraitflow.operators.shard_source import SkipCounter, read_shard

    whole = _three_sample_shard(tmp_path / "whole.tar")
    header = whole.index(b"s1.json")  # the second sample's first header
    last = whole.index(b"s2.npy") + 512 + 1024  # where s2's data ends: the end blocks follow
    broken = {"cut_at_a_header": whole[:header], "cut_inside_a_header": whole[:header + 100],
              "garbled_header": whole[:header + 150] + b"x" + whole[header + 151:],
              "cut_in_the_end_blocks": whole[:last + 100]}[damage]
    (tmp_path / "broken.tar").write_bytes(broken)
    counter = SkipCounter()
    samples = list(read_shard(str(tmp_path / "broken.tar"), counter.handler))
    assert counter.counts() == {"shard_unreadable": 1}
    expected = ["s0", "s1", "s2"] if damage == "cut_in_the_end_blocks" else ["s0"]
    assert [s["__key__"] for s in samples] == expected and all(set(s) == {"__key__", "__url__", "json", "npy"} for s in samples)
    intact = SkipCounter()
    assert [s["__key__"] for s in read_shard(str(tmp_path / "whole.tar"), intact.handler)] == ["s0", "s1", "s2"]
    assert intact.counts() == {}


def test_a_compressed_shard_is_unreadable_and_an_oversized_member_is_not_read(tmp_path, monkeypatch) -> None:
    """A 2-MB gzip of a tar whose member claims 2 GiB made the loader allocate 4.5 GB: shards are read
    as the plain tars curation writes, and a member over MAX_MEMBER_BYTES is left unread."""
    import gzip

    from portraitflow.operators import shards
    from portraitflow.operators.shard_source import SkipCounter, read_shard

    whole = _three_sample_shard(tmp_path / "whole.tar")
    (tmp_path / "packed.tar").write_bytes(gzip.compress(whole))
    counter = SkipCounter()
    assert list(read_shard(str(tmp_path / "packed.tar"), counter.handler)) == []
    assert counter.counts() == {"shard_unreadable": 1}
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 599)  # each sample's `npy` is 600 bytes
    intact = SkipCounter()
    samples = list(read_shard(str(tmp_path / "whole.tar"), intact.handler))
    assert [set(s) for s in samples] == [{"__key__", "__url__", "json"}] * 3 and intact.counts() == {}
    assert [fields for _, fields in shards.iter_samples(tmp_path / "whole.tar")] == [{"json": b"{}"}] * 3
    with tarfile.open(tmp_path / "linked.tar", "w") as tar:  # `inspect --verify` raised KeyError on the link
        link = tarfile.TarInfo("s0.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("s0.json"), io.BytesIO(b""))
    assert [key for key, _ in shards.iter_samples(tmp_path / "linked.tar")] == ["s0"]


def test_resampled_mode_is_endless_with_fixed_epochs(dataset) -> None:
    loader = TrainLoader(_config(dataset, resampled=True, samples_per_epoch=6, batch_size=2, shuffle_buffer=0))
    assert [len(batch["key"]) for batch in loader] == [2, 2, 2]
    with pytest.raises(ValueError):
        _config(dataset, resampled=True, seed=1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resampled_epoch_holds_exactly_samples_per_epoch(dataset, num_workers: int) -> None:
    """Whole batches, then one with the remainder; drop_last drops it instead."""
    def sizes(**overrides) -> list[int]:
        batches = list(TrainLoader(_config(dataset, resampled=True, batch_size=2, num_workers=num_workers, **overrides)))
        assert all(len(values) == len(batch["key"]) for batch in batches for values in batch.values())
        return [len(batch["key"]) for batch in batches]

    assert sizes(samples_per_epoch=5) == [2, 2, 1]
    assert sizes(samples_per_epoch=5, drop_last=True) == [2, 2]
    with pytest.raises(ValueError, match="drop every sample"):
        TrainLoader(_config(dataset, resampled=True, batch_size=2, samples_per_epoch=1, drop_last=True))


def test_missing_shard_paths_fail_when_the_loader_is_built(dataset, tmp_path) -> None:
    """A typo is not an unreadable shard: it fails at once, naming the path, instead of an empty epoch."""
    shards = dataset[0] / "shards"
    for source, named in [(str(tmp_path / "curatd"), str(tmp_path / "curatd")),
                          (str(shards / "00000.tar"), str(shards / "00000.tar")),
                          (str(shards / "{000000..000005}.tar"), f"{shards / '000004.tar'} and 1 more of 6")]:
        with pytest.raises(FileNotFoundError, match=re.escape(named)):
            TrainLoader(_config(dataset, shards=[source]))
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(shards))} has no index.wids.json"):
        TrainLoader(_config(dataset, shards=[str(shards)]))


def test_an_epoch_without_samples_raises_with_the_skip_counts(dataset, tmp_path) -> None:
    garbage = tmp_path / "000000.tar"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(RuntimeError, match=r"no samples from 1 shard.*'shard_unreadable': 1"):
        list(TrainLoader(_config(dataset, shards=[str(garbage)])))
    with pytest.raises(RuntimeError, match=r"no samples from 4 shard.*'clip_too_short': 8"):
        list(TrainLoader(_config(dataset, n_frames=CLIP_FRAMES + 1, num_workers=2)))
    with pytest.raises(RuntimeError, match=r"skipped so far \{\}; drop_last drops each worker's last incomplete batch"):
        list(TrainLoader(_config(dataset, batch_size=5, drop_last=True, num_workers=2)))  # 4 samples a worker


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resampled_epoch_without_usable_shards_raises_instead_of_drawing_forever(dataset, tmp_path, num_workers) -> None:
    """10 draws per shard plus the shuffle buffer and the shards read at once, whatever makes the shards
    unusable; sparse data still trains."""
    garbage = tmp_path / "000000.tar"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    resampled = dict(resampled=True, samples_per_epoch=4, num_workers=num_workers, shuffle_buffer=8)
    with pytest.raises(RuntimeError, match=r"no samples from 1 shard.*'shard_unreadable'"):
        list(TrainLoader(_config(dataset, shards=[str(garbage)], **resampled)))
    one_shard = str(dataset[0] / "shards" / "000000.tar")
    draws = 10 * 1 + 8 + 4  # per worker: 10 per shard, the shuffle buffer's 8, 4 shards open; 2 clips per shard
    with pytest.raises(RuntimeError, match=rf"no samples from 1 shard.*'clip_too_short': {draws * 2 * max(1, num_workers)}"):
        list(TrainLoader(_config(dataset, shards=[one_shard], n_frames=CLIP_FRAMES + 1, **resampled)))
    with pytest.raises(RuntimeError, match=r"no samples from 4 shard.*'clip_too_short'"):
        list(TrainLoader(_config(dataset, n_frames=CLIP_FRAMES + 1, **resampled)))
    usable_and_not = _config(dataset, **resampled)
    usable_and_not = usable_and_not.model_copy(update={"shards": usable_and_not.shards + [str(garbage)] * 20})
    assert len(_keys(TrainLoader(usable_and_not))) == 4


def test_index_folder_and_brace_pattern_name_the_same_shards(dataset) -> None:
    by_index = expand_shards(str(dataset[0] / "index.wids.json"))
    by_folder = expand_shards(str(dataset[0]))
    by_pattern = expand_shards(str(dataset[0] / "shards" / "{000000..000003}.tar"))
    assert by_index == by_folder == by_pattern and len(by_index) == 4


def test_a_shard_named_twice_is_read_twice_with_a_warning(dataset, caplog) -> None:
    """A folder listed twice, or a pattern overlapping it, gave every sample twice an epoch without a
    word; repeating shards is also how WebDataset users oversample, so they stay as named."""
    with caplog.at_level("WARNING"):
        urls = expand_shards([str(dataset[0]), str(dataset[0] / "shards" / "{000002..000003}.tar")])
    assert urls == expand_shards(str(dataset[0])) + urls[-2:] and "2 shard(s) are named more than once" in caplog.text


def test_shard_errors_say_what_to_give(dataset, tmp_path, monkeypatch) -> None:
    """A `*.tar` glob read "shard not found", a folder whose curation accepted nothing "no shards",
    and `~` was not expanded."""
    import json

    with pytest.raises(FileNotFoundError, match=r"not patterns here: give a brace pattern"):
        expand_shards(str(dataset[0] / "shards" / "*.tar"))
    empty = tmp_path / "nothing_accepted"
    empty.mkdir()
    (empty / "index.wids.json").write_text(json.dumps({"wids_version": 1, "shardlist": []}))
    with pytest.raises(ValueError, match="a curation that accepted no clip"):
        expand_shards(str(empty))
    with pytest.raises(ValueError, match="no shards given: set train_data.shards"):  # the default, left unset
        expand_shards([])
    monkeypatch.setenv("HOME", str(dataset[0].parent))
    assert expand_shards(f"~/{dataset[0].name}") == expand_shards(str(dataset[0]))


def test_an_index_that_names_a_command_is_refused_not_run(dataset, tmp_path) -> None:
    """An index is data from whoever shared the corpus: webdataset runs `pipe:` URLs through the shell."""
    import json
    import shutil

    marker = tmp_path / "ran"
    shared = tmp_path / "shared"
    shutil.copytree(dataset[0], shared)
    index = json.loads((shared / "index.wids.json").read_text())
    index["shardlist"][0]["url"] = f"pipe:touch {marker}; cat {shared / 'shards' / '000000.tar'}"
    (shared / "index.wids.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="an index may name files and s3/gs"):
        list(TrainLoader(_config(dataset, shards=[str(shared)])))
    assert not marker.exists()
    (shared / "index.wids.json").write_text("junk")  # a bare JSONDecodeError named no file
    with pytest.raises(ValueError, match=r"index.wids.json cannot be read as a shard index \(JSONDecodeError"):
        list(TrainLoader(_config(dataset, shards=[str(shared)])))


@pytest.mark.parametrize("name", ["cur {a,b}", "cur{1..2}", "cur::x", "run-2024-05-01T10:00"])
def test_a_curated_folder_loads_whatever_its_name_looks_like(dataset, tmp_path, name) -> None:
    """A path that exists is not a brace pattern, a `::` list or a URL scheme."""
    import shutil

    folder = tmp_path / name
    shutil.copytree(dataset[0], folder)
    assert expand_shards(str(folder)) == [str(folder / "shards" / f"00000{i}.tar") for i in range(4)]
    assert len(_keys(TrainLoader(_config(dataset, shards=[str(folder)])))) == 8


def test_ray_data_path_yields_the_same_samples_and_counts_the_same_skips(dataset, damaged, ray_local) -> None:
    """A truncated shard is read up to its break, as on the PyTorch path: Ray's read of it failed
    whole, dropping the samples of every shard its read task held, uncounted."""
    import ray

    cfg = _config(dataset, seed=3, batch_size=4, n_frames=4)
    cfg = cfg.model_copy(update={"shards": cfg.shards + [damaged[0]]})
    loader = TrainLoader(cfg)
    torch_samples = {key: {name: value[i] for name, value in batch.items() if name != "key"}
                     for batch in loader for i, key in enumerate(batch["key"])}
    fields = set(next(iter(torch_samples.values()))) | {"key"}
    dataset_, tally = ray_train_dataset(cfg)
    seen = set()
    for batch in dataset_.iter_torch_batches(batch_size=3, collate_fn=RayCollate()):
        assert set(batch) == fields
        for i, key in enumerate(batch["key"]):
            seen.add(key)
            for name, value in torch_samples[key].items():
                assert batch[name][i].dtype == value.dtype and torch.equal(batch[name][i], value), name
    assert seen == set(torch_samples) == set(dataset[1]) | damaged[1]
    assert ray.get(tally.counts.remote()) == loader.skipped and loader.skipped["shard_unreadable"] == 1


def test_a_bug_fails_the_ray_epoch_instead_of_emptying_it(dataset, ray_local, monkeypatch) -> None:
    """Ray's errored-block allowance took any exception for a bad read: 0 samples, no error."""
    buggy = TrainDataConfig.model_construct(**{**_config(dataset).model_dump(), "pixel_dtype": "bogus"})
    with pytest.raises(Exception, match="bogus"):  # the driver's first sample meets it
        ray_train_dataset(buggy)
    monkeypatch.setattr("portraitflow.pipelines.train_data.check_trainable", lambda urls, build: None)
    dataset_, _ = ray_train_dataset(buggy)
    with pytest.raises(Exception, match="bogus"):  # and so does every task
        dataset_.take_all()


def test_the_ray_path_refuses_shards_without_a_sample_to_train_on(dataset, ray_local, monkeypatch) -> None:
    """Every sample skipped: the Ray epochs ran through zero batches and finished, no error. A usable
    corpus costs the check one sample of its first shard."""
    with pytest.raises(RuntimeError, match=r"no sample of 4 shard.*'clip_too_short': 8"):
        ray_train_dataset(_config(dataset, n_frames=CLIP_FRAMES + 1))
    from portraitflow.operators import ray_train_samples

    reads, read_shard = [], ray_train_samples.read_shard
    monkeypatch.setattr(ray_train_samples, "read_shard", lambda url, handler: reads.append(url) or read_shard(url, handler))
    ray_train_dataset(_config(dataset))
    assert len(reads) == 1


def test_ray_path_reads_each_epochs_shard_permutation_and_refuses_resampling(dataset, ray_local, monkeypatch) -> None:
    """It read the shards in key order every epoch when seeded (tasks of neighbouring keys, from few
    sources), and took `resampled` and `shard_shuffle: false` without a word."""
    import ray.data

    from_items, orders = ray.data.from_items, []
    monkeypatch.setattr(ray.data, "from_items",
                        lambda rows, **kwargs: orders.append([row["url"] for row in rows]) or from_items(rows, **kwargs))
    in_order = expand_shards(_config(dataset).shards[0])
    for epoch in (0, 1):
        ray_train_dataset(_config(dataset, seed=3), epoch=epoch)
    ray_train_dataset(_config(dataset, seed=3, shard_shuffle=False), epoch=1)
    ray_train_dataset(_config(dataset), epoch=0)
    first, second, unshuffled, unseeded = orders
    assert sorted(first) == sorted(second) == sorted(unseeded) == in_order == unshuffled
    assert first != second and first != in_order
    with pytest.raises(ValueError, match="resampled is for TrainLoader"):
        ray_train_dataset(_config(dataset, resampled=True))


@pytest.mark.slow
def test_shards_of_the_curation_flow_feed_the_loader(media_dir, media_manifest, ray_local, mlflow_uri, tmp_path) -> None:
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.curate import run_curation

    talking = media_manifest[(media_manifest.kind == "talking_video") & (media_manifest.width == 512)
                             & (media_manifest.height == 512) & (media_manifest.duration_s < 4)]
    video = media_dir / talking.sort_values("file").iloc[0].file
    cfg = load_config(None, [f"mlflow.tracking_uri={mlflow_uri}"])
    assert run_curation(cfg, [str(video)], tmp_path / "curated")["clips_accepted"] >= 1
    loader = TrainLoader(TrainDataConfig(shards=[str(tmp_path / "curated")], n_frames=25, num_workers=0, seed=0))
    batches = list(loader)
    assert loader.skipped == {} and sum(len(b["key"]) for b in batches) >= 1
    batch = batches[0]
    assert batch["frames"].shape[1:] == (25, 3, cfg.curate.crop_size, cfg.curate.crop_size)
    assert batch["identity"].shape[1] > 0 and torch.allclose(batch["identity"].norm(dim=1), torch.ones(1), atol=1e-3)
    kps = batch["kps"][0]
    assert kps.min() >= 0 and kps.max() <= cfg.curate.crop_size  # crop pixels, aligned with the mp4
    assert (kps[:, 0, 0] < kps[:, 1, 0]).all() and (kps[:, 2, 1] < kps[:, 3, 1]).all()  # eyes left-right, nose above mouth
    assert ((batch["intensity_buckets"] >= 0) & (batch["intensity_buckets"] <= 127)).all()
    assert batch["reference_face"].std() > 0.05 and batch["expression_crops"].std() > 0.05


def test_a_bug_is_raised_not_counted_as_a_skipped_sample() -> None:
    """Bad data arrives as SampleSkipped or a broken tar stream; anything else would quietly empty
    an epoch if it were skipped, so it is raised (as the Ray Data path raises it)."""
    from portraitflow.operators.shard_source import SkipCounter
    from portraitflow.operators.train_sample import SampleSkipped

    counter = SkipCounter()
    assert counter.handler(SampleSkipped("bad_array", "x")) and counter.handler(EOFError("cut"))
    with pytest.raises(KeyError):
        counter.handler(KeyError("a typo in the loader"))
    assert counter.counts() == {"bad_array": 1, "shard_unreadable": 1}


@pytest.mark.parametrize("setting", [{"seed": -1}, {"resolution": 100}])
def test_settings_the_loader_or_model_would_fail_on_are_refused_with_the_config(setting: dict) -> None:
    """A negative seed failed at the first random draw, a side off the 64 grid in the trainer's UNet."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=next(iter(setting))):
        TrainDataConfig(**setting)


def test_a_config_from_before_the_ray_reader_change_still_loads() -> None:
    """`ray_max_errored_blocks` was removed: refusing it would break every config that set it."""
    with pytest.warns(UserWarning, match="ray_max_errored_blocks is gone"):
        assert TrainDataConfig(ray_max_errored_blocks=3) == TrainDataConfig()


def test_workers_that_would_read_no_shard_are_warned_of(dataset, caplog) -> None:
    """Workers take whole shards: 4 shards for 6 workers left 2 idle, silently."""
    with caplog.at_level("WARNING", logger="portraitflow.pipelines.train_data"):
        TrainLoader(_config(dataset, num_workers=6))
    assert "reads 4 shard(s) with num_workers=6, so 2 worker(s) read nothing" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="portraitflow.pipelines.train_data"):
        TrainLoader(_config(dataset, num_workers=4))
        TrainLoader(_config(dataset, num_workers=6, resampled=True, samples_per_epoch=8))
    assert "read nothing" not in caplog.text
