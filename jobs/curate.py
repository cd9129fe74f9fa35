"""`portraitflow curate INPUT... --out DIR`: raw videos to WebDataset shards with a full manifest.

The driver's part of the flow: which inputs are pending (resume), the corpus-wide identity
decisions once every input is scanned and its kept clips staged (a clip they reject is simply not
packed), shard packing with completion markers, the manifest, and the MLflow run. The Ray Data
wiring is pipelines/curate.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import shutil
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.curate import CurateConfig, absolute_folder
from portraitflow.jobs.config.face import FaceConfig
from portraitflow.jobs.config.fields import operational
from portraitflow.jobs.runtime import claim_folder
from portraitflow.jobs.options import (ConfigOption, MlflowUriOption, RayAddressOption, SetOption,
                                      check_out_folder, refuse_missing_face_models, refuse_unreachable_services,
                                      resolve_config, say_failures, worker_lacking_models)
from portraitflow.models.face.factory import model_digests
from portraitflow.models.face.model_files import ModelFilesMissing
from portraitflow.operators import ledger
from portraitflow.operators.atomic import FolderBusy, UnreadableFile, atomic_write, exclusive_folder
from portraitflow.operators.curate_input import renders_after_decisions
from portraitflow.operators.decode import probe_video
from portraitflow.operators.corpus_decisions import Identities, corpus_ledger, decide_clips
from portraitflow.operators.face_scan import SCAN_DECODE, check_galleries
from portraitflow.operators.filters import RENDER_FAILED
from portraitflow.operators.inputs import (clip_input_key, distinct_keys, expand_inputs, input_key, is_uri, local_copy,
                                          names_nothing)
from portraitflow.operators.probe import error_text
from portraitflow.operators.quarantine import MAX_ATTEMPTS, quarantined_row
from portraitflow.operators.scan_store import (GALLERY_DIGEST_PREFIX, GALLERY_SETTINGS, SCAN_MEASURES_VERSION,
                                               gallery_digests, gallery_listing, load_scan_meta, scan_clips, scan_path)
from portraitflow.operators.shards import (INDEX_NAME, default_pack_workers, indexed_shards, pack_shards, rewrite_whole,
                                           shard_notes, shard_paths, whole_shard_keys, write_index)

log = logging.getLogger(__name__)


class Layout:
    """Where everything lives under the output folder."""

    def __init__(self, out: Path) -> None:
        out = Path(out).resolve()  # workers start elsewhere: each node's own directory on a cluster
        self.out = out
        self.shards = out / "shards"
        self.state = out / ".state"
        self.scans = self.state / "scan"
        self.staging = self.state / "staging"
        self.done = self.state / "done"
        self.attempts = self.state / "attempts"
        self.settings = self.state / "settings.json"
        self.shard_keys = shard_notes(out)  # each shard's keys, read once (`whole_shard_keys`)
        self.corpus = self.state / "corpus"  # the clips kept so far, for the corpus decisions (`CorpusLedger`)
        self.lock = self.state / "lock"

    def make(self) -> None:
        shutil.rmtree(self.attempts, ignore_errors=True)  # attempts count per invocation
        for folder in (self.shards, self.scans, self.staging, self.done, self.attempts):
            folder.mkdir(parents=True, exist_ok=True)


#: the error of a kept clip whose render result never came back (its worker died): the input is
#: `failed`, so the next run renders it again.
RENDER_LOST = "rendering: the worker processing this input crashed; its result never came back"

#: settings that may change between runs into one output folder: they change how fast the work
#: is done or how the shards are cut, never what a sample holds or which clips are kept.
OPERATIONAL_SETTINGS = {"face": operational(FaceConfig), "curate": operational(CurateConfig)}

#: settings added with a default that changed the results, at the value that reproduces what a folder
#: curated before they existed got; any other setting added since counts at its default
#: (the scan measures of a folder that records none: curated before they were recorded)
BEHAVIOUR_BEFORE_ADDED = {"curate": {"shot_hash_threshold": 0.0, "duplicate_mirrored": False,
                                      "duplicate_keep_unique": False, "identity_switch_margin_seconds": 0.0},
                          "versions": {"scan_measures": 6}}
#: what the latest measures version changed in what a corpus holds, for the refusal to mix them
MEASURES_CHANGES = ("since 9: HDR and BT.2020 video read in SDR colours, the frames after a clip's last whole "
                    "window bucketed over its last 25, landmarks fitted again on crops finer than the analysis frame; "
                    "since 8: identity embedded at least every identity_sample_seconds, the reference frame one "
                    "of those embedded, a switch away and back cut into its parts, a clip denied when any sample is a denied person, frames picked allowing "
                    "for Matroska's millisecond times; since 7: frames where the face leaves the crop cut out "
                    "(face_leaves_crop), identity embedded "
                    "on detected frames only, unmeasured sharpness/keypoint_yaw/profile_share NaN; since 6: motion "
                    "on smoothed landmarks, a reference frame with open eyes, pose.npy fitted centred in the crop, "
                    "profiles rejected, interlaced frames blended")


def corpus_settings(cfg: PortraitFlowConfig, models: bool = True) -> dict[str, Any]:
    """The settings a corpus's decisions and samples depend on, as JSON-ready values; a gallery as
    the digest of the photos it holds (`gallery_digests`), which its decisions depend on, not its
    path; with `models`, the face model files by their digests where this machine has them (a
    driver of a cluster may not: only its workers load them), else none."""
    settings = {section: getattr(cfg, section).model_dump(mode="json", exclude=exempt)
                for section, exempt in OPERATIONAL_SETTINGS.items()}
    settings["curate"] |= gallery_digests(cfg.curate)
    try:
        digests = model_digests(cfg.face) if models else {}
    except ModelFilesMissing:
        digests = {}
    return settings | {"versions": {"scan_measures": SCAN_MEASURES_VERSION}, "models": digests}


def check_corpus_settings(cfg: PortraitFlowConfig, layout: Layout) -> list[str]:
    """Refuse to resume a corpus with other settings once it holds finished work: its finished
    inputs would keep the old decisions and samples while new ones got the new, and nothing in the
    result would say so. Until then (a first run that failed early, or one that finished nothing)
    any settings are taken; returns what they change, as `section.key: old -> new`."""
    if not layout.settings.is_file():
        if holds_finished_work(layout):  # every version that recorded nothing measured otherwise
            raise typer.BadParameter(f"{layout.out} holds a corpus that records no settings (curated by an early "
                                     "version): curate into a new --out", param_hint="--out")
        return []
    try:
        recorded = json.loads(layout.settings.read_text())
        if not (isinstance(recorded, dict) and all(isinstance(value, dict) for value in recorded.values())):
            raise ValueError("not a mapping of sections")
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise typer.BadParameter(f"{layout.settings} is damaged ({exc}): it records the settings {layout.out} was "
                                 "curated with; restore it from a copy of the folder, or curate into a new --out",
                                 param_hint="--out") from None
    current = corpus_settings(cfg)
    # a setting added since the folder was curated counts at the value that keeps the old behaviour
    defaults = corpus_settings(PortraitFlowConfig(), models=False)
    was = {section: {**defaults[section], **BEHAVIOUR_BEFORE_ADDED.get(section, {}), **recorded.get(section, {})}
           for section in current}
    measured_by = was["versions"]["scan_measures"]
    if measured_by != SCAN_MEASURES_VERSION and holds_finished_work(layout):
        said = measured_by if "versions" in recorded else f"{measured_by} or older"
        raise typer.BadParameter(
            f"{layout.out} holds a corpus measured by an older version of curation (scan measures {said}, now "
            f"{SCAN_MEASURES_VERSION}: {MEASURES_CHANGES}); its samples would not match new ones, whatever the "
            "settings: curate into a new --out", param_hint="--out")
    was["curate"] |= _galleries_recorded_by_path(was["curate"], cfg, current["curate"])
    if not recorded.get("models") or not current["models"]:  # not recorded then, or not on this machine now:
        was["models"] = current["models"]  # unknown, taken as the same
    differing = [(f"{section}.{key}", was[section].get(key), value) for section, values in current.items()
                 for key, value in values.items() if was[section].get(key) != value]
    changed = [f"{name}: {old!r} -> {new!r}" for name, old, new in differing]
    if changed and holds_finished_work(layout):
        restorable = {f"{section}.{key}" for section, values in [*recorded.items(), *BEHAVIOUR_BEFORE_ADDED.items()]
                      for key in values}
        sets = " ".join(shlex.quote(f"--set={name}={json.dumps(old)}") for name, old, _ in differing
                        if name in restorable and not _is_gallery_digest(name, old) and not name.startswith("models."))
        listed = recorded.get("galleries", {})
        photos = ", ".join(f"{name} holding the photos it held{_listed_photos(listed.get(name.partition('.')[2]))}"
                           for name, old, _ in differing if _is_gallery_digest(name, old))
        models = "the face model files it was curated with" if any(n.startswith("models.") for n, *_ in differing) else ""
        restore = " and ".join(filter(None, [sets, photos, models])) or "(none recorded)"
        raise typer.BadParameter(
            f"{layout.out} holds a corpus curated with other settings ({'; '.join(changed)}); "
            f"curate into a new --out, or run with the recorded settings: {restore}", param_hint="--out")
    return changed


def _galleries_recorded_by_path(recorded: dict[str, Any], cfg: PortraitFlowConfig,
                                current: dict[str, Any]) -> dict[str, Any]:
    """The galleries of a folder recorded before galleries were recorded by their photos: its
    record holds each folder's path, so what the folder held then is unknown. Where that path
    names the folder given now, the gallery counts as unchanged (refusing would lock such a folder
    for good: no setting restores photos); another folder, or none now, is a change like any other."""
    return {name: current[name] for name in GALLERY_SETTINGS
            if isinstance(recorded.get(name), str) and not _is_gallery_digest(f"curate.{name}", recorded[name])
            and absolute_folder(recorded[name]) == getattr(cfg.curate, name)}


def _listed_photos(entry: dict[str, Any] | None) -> str:
    """` (FOLDER: photo, ...)` as a curation recorded a gallery (`gallery_listing`); empty where it did not."""
    if not entry:
        return ""
    photos = entry.get("photos", [])
    return f" ({entry.get('path')}: {', '.join(photos[:10])}{', ...' if len(photos) > 10 else ''})"


def _is_gallery_digest(name: str, value: Any) -> bool:
    """Whether `value` of the setting `name` (`section.key`) records a gallery's photos: no
    `--set` restores it."""
    section, _, key = name.partition(".")
    return section == "curate" and key in GALLERY_SETTINGS and isinstance(value, str) \
        and value.startswith(GALLERY_DIGEST_PREFIX)


def holds_finished_work(layout: Layout) -> bool:
    """Whether the folder has a shard or an input done: what its recorded settings decided."""
    return bool(shard_paths(layout.shards)) or ledger.any_done(layout.done)


@contextlib.contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    """Hold the output folder for one curation at a time: two would number their shards alike."""
    try:
        with exclusive_folder(layout.out, layout.lock):
            claim_folder(layout.out, "curate")
            yield
    except FolderBusy as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None


def _repair_shards(layout: Layout) -> dict[str, Path]:
    """Every whole sample in the shards, key -> shard.

    A shard that cannot be read whole (cut short by a full disk or an interrupted copy, a bad
    block) would stop every run into the folder: it is rewritten with the samples that can still
    be read whole, under its own name, or removed when none can (an empty shard gives a loader
    nothing to draw), and the index follows. The inputs whose samples it lost are curated again
    (`_lost_inputs`)."""
    in_shards: dict[str, Path] = {}
    indexed = _indexed_samples(layout.out)
    repaired = False
    for path in shard_paths(layout.shards):
        keys, damage = whole_shard_keys(path, layout.shard_keys)
        if damage is not None:
            keys, repaired = _repair_shard(path, keys, damage), True
            listed = indexed.get(f"{layout.shards.name}/{path.name}")
            lost = f"lost {listed - len(keys)} of the {listed} the index listed" if listed is not None else \
                "lost those after the break"
            log.warning("%s could not be read whole (%s): %s with its %d whole sample(s), %s", path, damage,
                        "rewrote it" if keys else "removed it", len(keys), lost)
        in_shards.update(dict.fromkeys(keys, path))
    if repaired:
        write_index(layout.out, layout.shards)
    return in_shards


def _repair_shard(path: Path, whole: list[str], damage: Exception) -> list[str]:
    """Rewrite a damaged shard with its whole samples (remove it when there are none); returns
    their keys. A shard the system refuses to read (permissions, an I/O error) is left as it is,
    and it or a folder that refuses the rewrite stops the run with what to do, not a traceback."""
    what_to_do = "move it out of the folder and rerun: the inputs whose samples it held are then curated again"
    if not isinstance(damage, tarfile.TarError):
        raise typer.BadParameter(f"{path} cannot be read ({damage}): {what_to_do}", param_hint="--out")
    try:
        if whole:
            return rewrite_whole(path)
        path.unlink()
        return []
    except OSError as exc:
        raise typer.BadParameter(f"{path} cannot be read whole ({damage}) and could not be rewritten ({exc}): "
                                 f"{what_to_do}", param_hint="--out") from exc


def _indexed_samples(out: Path) -> dict[str, int]:
    """Samples per shard as the index last listed them (none when it is missing or unreadable)."""
    try:
        return indexed_shards(out)
    except (OSError, ValueError):
        return {}


def _lost_inputs(markers: dict[str, dict], in_shards: Collection[str]) -> dict[str, dict]:
    """The markers, made `failed` (so their inputs are curated again), of inputs some of whose
    accepted clips are no longer in the shards: a marker vouches for its input's samples, and a
    repaired or removed shard may have lost them. Checked on every run, so a run stopped between
    repairing a shard and rewriting the markers is finished by the next."""
    failed = {}
    for key, marker in markers.items():
        lost = [c["key"] for c in marker["clips"] if c["decision"] == ledger.ACCEPTED and c["key"] not in in_shards]
        if lost:
            failed[key] = ledger.lost_from_shards(marker, lost, RENDER_FAILED)
    return failed


def _decide_corpus(cfg: PortraitFlowConfig, rows: list[dict], layout: Layout,
                   in_shards: dict[str, Path]) -> dict[str, list[dict]]:
    """The candidate clips of the pending inputs, with the cap per identity and the near-duplicate
    checks applied (`decide_clips`).

    Every clip already in the shards is committed to the corpus: those of finished inputs, and
    those of an input an earlier run packed before it could mark it done, or marked failed because
    another of its clips failed to render, whatever its retry finds now (it may fail, or scan
    another file). The ledger the last decisions saved holds most of them; those it lacks are read
    from their scans. The other pending clips are decided against them, and the ledger is saved
    again for the next run.
    """
    fps = cfg.curate.fps
    packed = _packed_by_input(in_shards)
    clips_by_input = {r["input_key"]: _input_clips(r, layout, packed.get(r["input_key"], []), in_shards, fps)
                      for r in sorted(rows, key=lambda r: r["input_key"])}
    undecided = [(key, c) for key, clips in clips_by_input.items() for c in clips
                 if c["reason"] is None and c["key"] not in in_shards]
    if not undecided:
        return clips_by_input
    corpus = corpus_ledger(cfg.curate, undecided[0][1]["same_person"], layout.corpus, in_shards)
    missing = _packed_by_input(in_shards.keys() - set(corpus.keys))
    committed = [(key, c) for key in sorted(missing.keys() - clips_by_input.keys())
                 for c in _committed_clips(layout, key, missing[key], in_shards, fps)]
    committed += [(key, c) for key, clips in clips_by_input.items() for c in clips if c["key"] in missing.get(key, ())]
    identities = Identities(layout.scans)
    unique_frames = round(cfg.curate.min_clip_seconds * fps) if cfg.curate.duplicate_keep_unique else 0
    cuts_of: dict[str, set[str]] = defaultdict(set)  # cuts packed by a run stopped before their parent's marker
    for clips in clips_by_input.values():
        for clip in clips:
            if clip.get("cut_from") and clip["key"] in in_shards:
                cuts_of[clip["cut_from"]].add(clip["key"])
    try:
        cut = decide_clips(corpus, committed, undecided, identities, unique_frames, cuts_of)
        corpus.save()
    finally:
        identities.close()
        corpus.close()
    for key, part in cut:
        clips_by_input[key] = sorted([*clips_by_input[key], part], key=lambda c: c["start"])
    return clips_by_input


def _input_clips(row: dict[str, Any], layout: Layout, packed: list[str], in_shards: dict[str, Path],
                 fps: float) -> list[dict[str, Any]]:
    """A pending input's candidate clips in time order: its scan's (none when the retry failed),
    and its clips in the shards (`packed`), kept whatever the scan says of them now."""
    key = row["input_key"]
    scanned = [] if row["status"] == ledger.FAILED else scan_clips(scan_path(layout.scans, key), key, fps)
    clips = {c["key"]: c for c in scanned}
    clips.update((c["key"], c) for c in _committed_clips(layout, key, packed, in_shards, fps))
    return sorted(clips.values(), key=lambda c: c["start"])


def _committed_clips(layout: Layout, input_key: str, samples: list[str], in_shards: dict[str, Path],
                     fps: float) -> list[dict[str, Any]]:
    """The clips of an input's samples in the shards: as its saved scan kept them, or where the
    scan does not (it is missing or damaged, or another file was scanned since) as the sample says."""
    if not samples:
        return []
    try:
        saved = scan_clips(scan_path(layout.scans, input_key), input_key, fps)
    except UnreadableFile:  # missing or damaged: the samples themselves tell their clips
        saved = []
    kept = {c["key"]: c for c in saved if c["reason"] is None}
    return [kept.get(sample) or _sample_clip(in_shards[sample], sample, fps) for sample in samples]


def _sample_clip(shard: Path, key: str, fps: float) -> dict[str, Any]:
    """A committed clip as its sample in `shard` tells it: its time range, its scores, and its
    identity (the embedding, the footage signature and thumbnails; None in samples written before them)."""
    arrays = ("id.npy", "signature.npy", "thumbnails.npy")
    with tarfile.open(shard, "r:") as tar:
        names = set(tar.getnames())
        fields = {name: tar.extractfile(f"{key}.{name}").read() for name in ("json", *arrays)
                  if f"{key}.{name}" in names}
    meta = json.loads(fields["json"])
    identity = tuple(np.load(io.BytesIO(fields[name]), allow_pickle=False) if name in fields else None
                     for name in arrays)
    return {"key": key, "start": round(meta["start_s"] * fps), "end": round(meta["end_s"] * fps), "reason": None,
            "measures": meta["scores"], "identity": identity, **({"cut_from": meta["cut_from"]} if "cut_from" in meta else {})}


def _render_kept(cfg: PortraitFlowConfig, layout: Layout, scanned: list[dict], clips_by_input: dict,
                 in_shards: Collection[str], cut_only: bool) -> None:
    """Render the clips the corpus decisions kept (with `cut_only`, those cut out of partial
    duplicates, when the scan rendered the others); each input's render errors, timings and count
    join its row. The clips of an input whose result never comes back fail (so the input is tried
    again by the next run)."""
    from portraitflow.pipelines.curate import render_decided

    by_key = {r["input_key"]: r for r in scanned}
    todo = []
    for key, clips in clips_by_input.items():
        kept = [c for c in clips if c["reason"] is None and c["key"] not in in_shards and ("cut" in c or not cut_only)]
        if kept:
            row = by_key[key]
            todo.append({"input_key": key, "uri": row["uri"], "width": row["width"], "height": row["height"],
                         "src_fps": row["src_fps"], "keys": json.dumps([c["key"] for c in kept if "cut" not in c]),
                         "cuts": json.dumps({c["key"]: [c["index"], *c["cut"]] for c in kept if "cut" in c})})
    rendered = render_decided(todo, cfg, layout.scans, layout.staging, layout.attempts)
    results = {r["input_key"]: r for r in rendered}
    for job in todo:
        keys = [*json.loads(job["keys"]), *json.loads(job["cuts"])]
        lost = {"render_errors": json.dumps(dict.fromkeys(keys, RENDER_LOST)), "timings": "{}", "rendered": 0}
        result, row = results.get(job["input_key"], lost), by_key[job["input_key"]]
        row["render_errors"] = json.dumps({**json.loads(row["render_errors"]), **json.loads(result["render_errors"])})
        row["timings"] = json.dumps(Counter(json.loads(row["timings"])) + Counter(json.loads(result["timings"])))
        row["rendered"] = int(row.get("rendered") or 0) + int(result["rendered"])


def _dry_run(rows: list[dict[str, str]], layout: Layout, out: Path) -> dict[str, Any]:
    """List what a run would do with each input, and why (reads the shards, repairs nothing)."""
    in_shards = {k for path in shard_paths(layout.shards)
                 for k in whole_shard_keys(path, layout.shard_keys, read_only=True)[0]}
    markers = ledger.load_markers(layout.done)
    rows, moved = _follow_moves(distinct_keys(rows, _curated_paths(markers)), markers, None)
    by_key = {row["input_key"]: row for row in rows}
    pending = {row["input_key"] for row in _pending(rows, markers, in_shards)}
    changed = set(ledger.changed_since_curated(rows, markers))
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as probes:  # the decoders release the GIL
        keys = sorted(pending)
        reasons = dict(zip(keys, probes.map(_unreadable, [by_key[key]["uri"] for key in keys])))
    unreadable = 0
    for row in rows:
        reason = reasons.get(row["input_key"])
        unreadable += reason is not None
        state = ("changed" if row["uri"] in changed else "moved  " if row["uri"] in moved else "done   ") \
            if row["input_key"] not in pending else "pending" if reason is None else "fails  "
        note = reason or (f"curated as {moved[row['uri']]}" if row["uri"] in moved else None)
        typer.echo(f"{state}  {row['input_key']}  {row['uri']}" + (f"  ({note})" if note else ""))
    typer.echo(f"{len(pending)} of {len(rows)} input(s) would be processed into {out}"
               + (f", {unreadable} of them would be recorded failed: they cannot be read" if unreadable else ""))
    _warn_changed(sorted(changed))
    return {"inputs": len(rows), "pending": len(pending), "unreadable": unreadable}


def _require_curation_resources(cfg: PortraitFlowConfig) -> None:
    """NotEnoughResources when Ray cannot place one curation actor (its pool would wait forever)."""
    from portraitflow.jobs.runtime import require_resource
    from portraitflow.pipelines.curate import WORKER_MEMORY

    needed = cfg.curate.actor_cpus
    require_resource(cfg.ray, "CPU", needed, lambda cpus: (
        f"a curation actor needs {needed} CPUs (curate.actor_cpus); Ray has {cpus:g}: lower "
        "curate.actor_cpus or give Ray more CPUs (ray.num_cpus on a local Ray; nodes on a cluster)"))
    require_resource(cfg.ray, "memory", WORKER_MEMORY, lambda have: (
        f"a curation actor declares {WORKER_MEMORY / 1024**3:g} GiB of memory; Ray has {have / 1024**3:.1f} GiB: "
        "free memory, or give Ray a smaller object store (ray.object_store_memory_mb)"))


def run_curation(cfg: PortraitFlowConfig, inputs: list[str], out: Path, dry_run: bool = False,
                 expanded: list[str] | None = None) -> dict[str, Any]:
    """Curate `inputs` into `out` (`expanded`: as `expand_inputs` gives them, where the caller has
    them already); returns the summary metrics (also logged to MLflow).
    NotEnoughResources when a local Ray cannot place one curation actor (it would wait forever)."""
    from portraitflow.jobs.runtime import init_ray

    layout = Layout(out)
    try:  # first: a missing gallery folder is said as such, not as photos that changed
        check_galleries(cfg)
    except (ValueError, OSError) as exc:  # a gallery without a face, the face models missing
        raise typer.BadParameter(str(exc)) from exc
    check_corpus_settings(cfg, layout)
    uris = expand_inputs(inputs) if expanded is None else expanded
    rows = sorted(({"uri": u, "input_key": input_key(u)} for u in uris), key=lambda r: r["input_key"])
    if dry_run:
        return _dry_run(rows, layout, out)
    with exclusive(layout):
        if check_corpus_settings(cfg, layout):  # again: a run that held the folder may have just recorded its own
            shutil.rmtree(layout.staging, ignore_errors=True)  # rendered with the settings now replaced
        layout.make()
        settings = corpus_settings(cfg)
        if not settings["models"] and layout.settings.is_file():  # the files are not here: keep what was recorded
            settings["models"] = json.loads(layout.settings.read_text()).get("models", {})
        settings["galleries"] = gallery_listing(cfg.curate)  # what a refusal names; the digests are compared
        atomic_write(layout.settings, json.dumps(settings, indent=1, sort_keys=True))
        in_shards = _repair_shards(layout)
        markers = ledger.load_markers(layout.done)
        rows, _ = _follow_moves(distinct_keys(rows, _curated_paths(markers)), markers, layout.done)
        _warn_changed(ledger.changed_since_curated(rows, markers))
        pending = _pending(rows, markers, in_shards, layout.done)
        if pending:  # every input is curated on `actor_cpus` CPUs; with none pending, Ray is not started
            init_ray(cfg.ray)
            _require_curation_resources(cfg)
        return _curate_pending(cfg, layout, rows, pending, in_shards, markers)


def _scanned_file(layout: Layout, row: dict[str, Any]) -> dict[str, int] | None:
    """The size and time of the local input file its scan was made of (`source_identity`), for
    `ledger.changed_since_curated`; None for a remote input or one without a scan (failed)."""
    path = scan_path(layout.scans, row["input_key"])
    if is_uri(row["uri"]) or not path.is_file():
        return None
    try:
        source = load_scan_meta(path).get("source", {})
    except UnreadableFile:  # damaged since (the input failed on it): as for no scan
        return None
    return {key: source[key] for key in ("size", "mtime_ns")} if "size" in source else None


def _curated_paths(markers: dict[str, dict]) -> dict[str, str]:
    """input key -> the path its marker records."""
    return {key: marker.get("input", {}).get("path", "") for key, marker in markers.items()}


def _follow_moves(rows: list[dict], markers: dict[str, dict], done_dir: Path | None) -> tuple[list[dict], dict[str, str]]:
    """`rows` with each input moved or renamed since it was curated (`ledger.moved_inputs`) under the
    key it was curated as, so it is done, not curated again and rejected as a duplicate of itself;
    its marker takes the new path (in `markers`, and in `done_dir` unless None: a dry run writes
    nothing). Also: each input moved since the last run's uri -> the path it was curated from."""
    moved = ledger.moved_inputs(rows, markers)
    was = {}
    for uri, key in moved.items():
        if markers[key]["input"]["path"] == uri:  # followed by an earlier run
            continue
        was[uri] = markers[key]["input"]["path"]
        markers[key] = ledger.moved_marker(markers[key], uri)
        if done_dir is not None:
            ledger.write_marker(done_dir, markers[key]["input"], markers[key]["clips"], markers[key].get("source"))
    if was:
        log.info("%d input(s) moved or renamed since they were curated keep their rows and clips, at the new path: %s",
                 len(was), ", ".join(f"{was[uri]} -> {uri}" for uri in list(was)[:5]))
    keyed = (dict(row, input_key=moved.get(row["uri"], row["input_key"])) for row in rows)
    return sorted(keyed, key=lambda row: row["input_key"]), was


def _warn_changed(paths: list[str]) -> None:
    """Name the done inputs whose file was replaced: they are not curated again (their clips are in
    the shards, under keys of their path), so the corpus keeps describing the earlier files."""
    if paths:
        log.warning("%d input(s) changed since they were curated (another size or modification time), and keep the "
                    "rows and clips of the earlier file: %s. To curate the new content, give it a new name or curate "
                    "into a new --out", len(paths), ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else ""))


def _unreadable(uri: str) -> str | None:
    """Why the run would record an input `failed` at its probe, or None. A remote input is not
    fetched (the run fetches it once, for the probe and everything after): only its store is
    resolved, which fails for a scheme no store takes (`http://`)."""
    try:
        if is_uri(uri):
            from pyarrow import fs

            fs.FileSystem.from_uri(uri)
            return None
        with local_copy(uri) as path:
            probe_video(path)
    except Exception as exc:  # what `probe_input` records
        return error_text(exc)
    return None


def _pending(rows: list[dict], markers: dict[str, dict], in_shards: Collection[str],
             done_dir: Path | None = None) -> list[dict]:
    """The rows without a done marker, counting as not done those whose clips a shard lost (their
    markers are rewritten `failed` into `done_dir`, when given, and the inputs named in the log)."""
    given = {r["input_key"] for r in rows}
    for key, marker in _lost_inputs(markers, in_shards).items():
        if done_dir is not None:
            ledger.write_marker(done_dir, marker["input"], marker["clips"])
            log.warning("%s: %s; %s", marker["input"]["path"], marker["input"]["error"],
                        "curating it again" if key in given else "marked failed, a run given it curates it again")
        markers[key] = marker
    return [r for r in rows if not ledger.is_done(markers.get(r["input_key"], {}))]


def _packed_by_input(in_shards: Collection[str]) -> dict[str, list[str]]:
    """The keys of the samples in the shards, by input key, sorted."""
    packed: dict[str, list[str]] = defaultdict(list)
    for sample in sorted(in_shards):
        packed[clip_input_key(sample)].append(sample)
    return packed


def _curate_pending(cfg: PortraitFlowConfig, layout: Layout, rows: list[dict], pending: list[dict],
                    in_shards: dict[str, Path], markers: dict[str, dict]) -> dict[str, Any]:
    """Curate the pending inputs, pack their shards, write the tables from `markers` (the folder's,
    as read at the start, followed by every marker this run writes: read once, ~21 kB of RAM each)."""
    from portraitflow.jobs.runtime import mlflow_run, recorded_after_the_work
    from portraitflow.pipelines.curate import curate_inputs

    out = layout.out
    started = time.perf_counter()
    with mlflow_run(cfg.mlflow, cfg.curate.experiment, out) as run:
        packed = _packed_by_input(in_shards)  # a retried input's clips in the shards are not rendered again
        given = [dict(r, packed=json.dumps(packed.get(r["input_key"], []))) for r in pending]
        scanned, ray_stats = curate_inputs(given, cfg, layout.scans, layout.staging, layout.attempts)
        returned = {r["input_key"] for r in scanned}
        lost = [quarantined_row(r, MAX_ATTEMPTS) for r in pending if r["input_key"] not in returned]
        scanned = sorted(scanned + lost, key=lambda r: r["input_key"])
        clips_by_input = _decide_corpus(cfg, scanned, layout, in_shards)
        _render_kept(cfg, layout, scanned, clips_by_input, in_shards, cut_only=not renders_after_decisions(cfg.curate))
        errors = {k: e for r in scanned for k, e in json.loads(r["render_errors"]).items()}
        by_key = {r["input_key"]: r for r in scanned}

        clip_rows: dict[str, list[dict]] = {}
        waiting: dict[str, set[str]] = {}
        for key, clips in clips_by_input.items():
            for clip in clips:
                if clip["reason"] is None and clip["key"] in errors:
                    clip.update(reason=RENDER_FAILED, error=errors[clip["key"]])
            clip_rows[key] = [ledger.clip_row(c["key"], by_key[key], c, cfg.curate.fps) for c in clips]
            waiting[key] = {c["key"] for c in clips if c["reason"] is None and c["key"] not in in_shards}

        def finish(key: str) -> None:
            markers[key] = ledger.write_marker(layout.done, ledger.input_row(by_key[key], clip_rows[key]),
                                               clip_rows[key], _scanned_file(layout, by_key[key]))

        for key in sorted(k for k, keys in waiting.items() if not keys):
            finish(key)
        owner = {k: i for i, keys in waiting.items() for k in keys}

        def on_shard(keys: list[str]) -> None:
            for sample in keys:
                if sample in owner:
                    waiting[owner[sample]].discard(sample)
                    if not waiting[owner[sample]]:
                        finish(owner[sample])

        for path in layout.staging.glob("*.tar"):  # rejected by corpus decisions, or staged by a killed run
            if path.stem not in owner:
                path.unlink()
        pack_shards(layout.staging, layout.shards, cfg.curate.shard_max_samples, cfg.curate.shard_max_bytes, on_shard,
                    layout.shard_keys, cfg.curate.shard_pack_workers or default_pack_workers())
        index = write_index(out, layout.shards)
        manifest, clips = ledger.write_tables(out, markers)
        _warn_foreign_samples(in_shards, set(clips.column("key").to_pylist()))
        elapsed = time.perf_counter() - started
        metrics = _metrics(manifest, clips, scanned, elapsed, {r["input_key"] for r in rows}, index, cfg.curate.fps)
        if run is not None:
            with recorded_after_the_work(out):
                _log_run(cfg, layout, metrics, manifest, clips, {r["input_key"] for r in pending}, ray_stats)
            metrics["mlflow_run_id"] = run.info.run_id
    return metrics


def _warn_foreign_samples(in_shards: dict[str, Path], clip_keys: set[str]) -> None:
    """Name the shards holding samples that are no clip of this corpus (a shard copied in from
    another): the index lists them, and a loader reads them as this corpus's."""
    foreign = Counter(path.name for key, path in in_shards.items() if key not in clip_keys)
    if foreign:
        log.warning("%d sample(s) in shards/ %s are no clip of this corpus (copied in from another?): move the "
                    "shard(s) out and rerun; `portraitflow inspect` names the samples",
                    sum(foreign.values()), ", ".join(sorted(foreign)))


def _metrics(manifest, clips, scanned, elapsed: float, keys: set[str], index: dict, fps: float) -> dict[str, Any]:
    """Counts of this invocation's inputs and clips, throughput of the work done now, time per stage."""
    table = manifest.to_pandas()
    table = table[table.input_key.isin(keys)]
    clip_table = clips.to_pandas()
    clip_table = clip_table[clip_table.input_key.isin(keys)]
    status = Counter(table.status)
    stages: dict[str, float] = defaultdict(float)
    seconds_in = 0.0  # of video scanned now: a resumed run reuses finished scans
    for row in scanned:
        timings = json.loads(row.get("timings") or "{}")
        for stage, seconds in timings.items():
            stages[stage] += seconds
        if row["status"] != ledger.FAILED and SCAN_DECODE in timings:
            seconds_in += float(row.get("duration_s") or 0.0)
    frames = seconds_in * fps
    metrics: dict[str, Any] = {
        "inputs": len(table),
        "inputs_accepted": status.get(ledger.ACCEPTED, 0),
        "inputs_rejected": status.get(ledger.REJECTED, 0),
        "inputs_failed": status.get(ledger.FAILED, 0),
        "clips": len(clip_table),
        "clips_accepted": int((clip_table.decision == ledger.ACCEPTED).sum()),
        "clips_rendered": sum(int(r.get("rendered") or 0) for r in scanned),
        "hours_in": float(table.seconds_in.sum()) / 3600,
        "hours_out": float(table.seconds_accepted.sum()) / 3600,
        "shards": len(index["shardlist"]),
        "wall_s": elapsed,
        "frames_per_s": frames / elapsed if elapsed else 0.0,
        "video_seconds_per_s": seconds_in / elapsed if elapsed else 0.0,
    }
    metrics.update({f"rejected_{r}": int(n) for r, n in Counter(clip_table[clip_table.decision != ledger.ACCEPTED].reason).items()})
    metrics.update({f"time_{s}_s": v for s, v in sorted(stages.items())})
    return metrics


def _log_run(cfg: PortraitFlowConfig, layout: Layout, metrics: dict[str, Any], manifest, clips, keys: set[str],
             ray_stats: str) -> None:
    """The run's params, metrics and artifacts: the manifest and clip rows of the inputs it
    curated (`keys`: those pending); the folder holds the whole corpus's, which logged on every
    run, resumes included, would copy a corpus of a million inputs' tables (about 1 GB) into each."""
    import mlflow
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from portraitflow.jobs.runtime import without_credentials
    from portraitflow.operators.curation_report import contact_sheet, histograms

    flat = {f"{section}.{k}": v for section, values in cfg.model_dump(mode="json").items() for k, v in values.items()}
    if flat.get("mlflow.tracking_uri"):  # a password in it would be stored in the run for all to read
        flat["mlflow.tracking_uri"] = without_credentials(flat["mlflow.tracking_uri"])
    mlflow.log_params({k: str(v) for k, v in flat.items()})  # MLflow cuts a value past its limit, with a warning
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    given = pa.array(sorted(keys), pa.string())
    manifest, clips = (table.filter(pc.is_in(table["input_key"], value_set=given)) for table in (manifest, clips))
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(manifest, Path(tmp) / "manifest.parquet")
        pq.write_table(clips, Path(tmp) / "clips.parquet")
        accepted = clips.filter(pc.equal(clips["decision"], ledger.ACCEPTED))["key"].to_pylist()
        contact_sheet(layout.shards, Path(tmp) / "contact_sheet.png", accepted, layout.shard_keys)
        histograms(clips, Path(tmp) / "histograms.png")
        (Path(tmp) / "ray_data_stats.txt").write_text(ray_stats)
        for name in ("manifest.parquet", "clips.parquet", "contact_sheet.png", "histograms.png", "ray_data_stats.txt"):
            mlflow.log_artifact(str(Path(tmp) / name))


def curate(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUTS...", help="Files, folders, globs, .txt/.parquet lists, or URIs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (shards, manifest, state).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the inputs a run would process (those without a finished record), each local one probed as the run would: one that cannot be read is listed `fails` with the reason; then stop. Remote inputs are not fetched, only their store resolved (an unknown scheme is listed `fails`).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    ray_address: RayAddressOption = None,
    mlflow_uri: MlflowUriOption = None,
) -> None:
    """Curate talking-head videos into WebDataset shards, a manifest and an MLflow run."""
    from portraitflow.jobs.runtime import NotEnoughResources

    check_out_folder(out, "curate")
    cfg = resolve_config(config, set_, ray_address, mlflow_uri)
    _refuse_inputs_in_working_dir(inputs)
    _refuse_inputs_that_name_nothing(inputs)  # a dry run too: it says what the run would do
    _refuse_undecodable_arguments(inputs)
    if not dry_run:  # a dry run loads no model
        refuse_unreachable_services(cfg)
        refuse_missing_face_models(cfg)
    try:
        expanded = expand_inputs(inputs)  # once: its warnings said once, a bucket listed once
        metrics = run_curation(cfg, inputs, out, dry_run=dry_run, expanded=expanded)
    except NotEnoughResources as exc:
        raise typer.BadParameter(str(exc)) from exc
    except Exception as exc:
        if (lacking := worker_lacking_models(exc)) is None:
            raise
        typer.echo(f"Error: {lacking}", err=True)
        raise typer.Exit(1) from None
    if not dry_run:
        typer.echo(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1))
        typer.echo(f"manifest {out / 'manifest.parquet'}\nclips {out / 'clips.parquet'}\n"
                   f"shards {out / 'shards'} (index {out / INDEX_NAME})")
        _say_failed_inputs(out / "manifest.parquet", metrics, set(expanded))


def _refuse_inputs_in_working_dir(inputs: list[str]) -> None:
    """A local video inside Ray's temporary copy of a submitted `--working-dir` (a relative path under
    `ray job submit`): its key is made of that copy's path, which another submission changes, so the
    same video was curated again as a new input (and the manifest recorded a folder Ray deletes). A
    list carried there is fine: the videos it names are what is checked."""
    from portraitflow.jobs.runtime import in_submitted_working_dir, submitted_job_runtime_env

    if not submitted_job_runtime_env().get("working_dir"):
        return
    inside = [spec for spec in expand_inputs(inputs) if not is_uri(spec) and in_submitted_working_dir(Path(spec))]
    if inside:
        raise typer.BadParameter(
            f"{inside[0]} is inside Ray's temporary copy of --working-dir ({Path(inside[0]).resolve()}), which changes "
            "with each submission: give absolute paths on storage every node sees (docs/cluster.md)", param_hint="INPUTS")


def _refuse_undecodable_arguments(inputs: list[str]) -> None:
    """A file name on the command line that is not valid UTF-8 (a shell glob's): Ray records the
    command line as UTF-8 and crashed starting; named through its folder or a list, the same file
    gets its `failed` row (not valid UTF-8) as any bad input does."""
    from portraitflow.operators.paths import escape_undecodable

    odd = [arg for arg in inputs if escape_undecodable(arg) != arg]
    if odd:
        raise typer.BadParameter(f"{escape_undecodable(odd[0])} is not valid UTF-8, which Ray cannot record as the "
                                 "command line it starts from: give its folder, or a .txt list naming it",
                                 param_hint="INPUTS")


def _refuse_inputs_that_name_nothing(inputs: list[str]) -> None:
    """Every argument a local path that is not there, or a pattern matching nothing (a typo): a usage
    error, not a run whose every input fails. Where some do name files, the others become `failed`
    rows, as any bad input does."""
    import glob

    if all(names_nothing(spec) for spec in inputs):
        patterns = [spec for spec in inputs if glob.has_magic(spec)]
        paths = [spec for spec in inputs if not glob.has_magic(spec)]
        said = ([f"no such file or folder: {', '.join(paths)}"] if paths else []) + (
            [f"matched no file (patterns are case-sensitive): {', '.join(patterns)}"] if patterns else [])
        raise typer.BadParameter("; ".join(said), param_hint="INPUTS")


def _say_failed_inputs(manifest: Path, metrics: dict[str, Any], given: set[str]) -> None:
    """The failed inputs of this run (`given`) and why (`say_failures`), as `animate` says its failed
    jobs: the summary's count alone hid a typo or a broken file (the folder's earlier failures are
    in its manifest, not news). Exit 1 when every input failed: nothing was curated."""
    import pandas as pd

    failed = pd.read_parquet(manifest, columns=["path", "status", "error"]).query("status == @ledger.FAILED")
    failed = failed[failed.path.isin(given)]
    say_failures(list(zip(failed.path, failed.error)), "the manifest's `error`")
    if metrics["inputs"] and metrics["inputs_failed"] == metrics["inputs"]:
        raise typer.Exit(1)
