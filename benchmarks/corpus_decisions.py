"""The curation driver's corpus decisions at scale, this checkout side by side with a baseline one.

A synthetic corpus in the formats a real run writes (one scan per input: its clips' metadata,
embeddings, footage signatures and 16x16 thumbnails at 25 fps), decided twice by
`jobs.curate._decide_corpus`, each in a fresh process:

- `first`: every input pending, nothing in the shards yet;
- `resume`: the clips the first run kept are in the shards, and `--added` new inputs are pending.

Reported per phase and checkout: wall seconds, the process's peak RSS, and its anonymous memory
at the end (what cannot be given back to the page cache; the corpus ledger's row files are
read through the page cache, which a busy head node reclaims), with the ratios current/baseline.
`--baseline REV` runs that commit from a temporary `git worktree` (the corpus is made once and
shared; each checkout decides into its own output folder).

    .venv/bin/python benchmarks/corpus_decisions.py [--inputs 2000] [--clips 5] [--seconds 10] [--added 20] [--baseline HEAD~1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _make_corpus(scans: Path, inputs: int, clips: int, seconds: float, persons: int, first: int = 0) -> list[str]:
    """Scans of `inputs` made-up inputs of `clips` kept clips each, numbered from `first`; returns their keys."""
    from scipy.ndimage import gaussian_filter1d

    from portraitflow.models.face.base import l2_normalise
    from portraitflow.operators.face_scan import Candidate
    from portraitflow.operators.overlap import content_signature
    from portraitflow.operators.scan_store import save_scan, scan_path

    rng = np.random.default_rng(first)
    faces = l2_normalise(np.random.default_rng(0).normal(size=(persons, 128)))
    frames = round(seconds * 25)
    keys = []
    for number in range(first, first + inputs):
        candidates = []
        for index in range(clips):
            thumbnails = np.clip(rng.uniform(40, 200, (1, 16, 16)) + gaussian_filter1d(
                rng.normal(0, 60, (frames, 16, 16)), 3, axis=0), 0, 255).astype(np.float32)
            arrays = {"embedding": l2_normalise(faces[rng.integers(persons)] + rng.normal(0, 0.03, 128)).astype(np.float32),
                      "signature": content_signature(thumbnails), "thumbnails": thumbnails}
            start = index * frames
            measures = {"face_side_px": 200.0, "sharpness": 100.0}
            candidates.append(Candidate(start, start + frames, None, measures, arrays))
        key = f"input{number:07d}"
        save_scan(scan_path(scans, key), {"fingerprint": "", "face_backend": "opencv", "same_person": 0.5}, candidates)
        keys.append(key)
    return keys


def _phase(out: Path, pending: list[str], committed: list[str]) -> dict:
    """Decide the `pending` inputs' clips against the `committed` samples; what it cost."""
    from portraitflow.jobs import curate
    from portraitflow.jobs.config import load_config

    cfg = load_config(None, [])
    started = time.perf_counter()
    decided = curate._decide_corpus(cfg, [{"input_key": key, "status": "ok"} for key in pending], curate.Layout(out),
                                    dict.fromkeys(committed, out / "unused.tar"))
    seconds = time.perf_counter() - started
    anon = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:"))
    kept = [c["key"] for clips in decided.values() for c in clips if c["reason"] is None]
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_mb": anon / 1024, "kept": kept}


def _run_phase(source: Path | None, out: Path, pending: list[str], committed: list[str]) -> dict:
    """`_phase` in a fresh process importing portraitflow from `source` (None: this checkout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if source is not None:
        shim = out.parent / f"shim_{out.name}"
        shim.mkdir(exist_ok=True)
        (shim / "portraitflow").unlink(missing_ok=True)
        (shim / "portraitflow").symlink_to(source)
        env["PYTHONPATH"] = str(shim)
    job = out.parent / f"job_{out.name}.json"
    job.write_text(json.dumps({"out": str(out), "pending": pending, "committed": committed}))
    done = subprocess.run([sys.executable, __file__, "--phase", str(job)], env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=5, help="kept clips per input")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--persons", type=int, default=0, help="identities (default: one per 2 inputs)")
    parser.add_argument("--added", type=int, default=20, help="inputs pending on the resume")
    parser.add_argument("--baseline", default="HEAD", help="the commit to compare with")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        job = json.loads(Path(args.phase).read_text())
        print(json.dumps(_phase(Path(job["out"]), job["pending"], job["committed"])))
        return
    work = Path(tempfile.mkdtemp(prefix="corpus_decisions_"))
    base = work / "baseline_src"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), args.baseline], check=True)
    try:
        scans = work / "scans"
        scans.mkdir()
        persons = args.persons or max(1, args.inputs // 2)
        started = time.perf_counter()
        first = _make_corpus(scans, args.inputs, args.clips, args.seconds, persons)
        added = _make_corpus(scans, args.added, args.clips, args.seconds, persons, first=args.inputs)
        print(f"corpus: {args.inputs} inputs x {args.clips} clips of {args.seconds:g} s, {persons} identities, "
              f"+{args.added} inputs on the resume (made in {time.perf_counter() - started:.0f} s)")
        results = {}
        for name, source in (("baseline", base), ("current", None)):
            out = work / name
            (out / ".state").mkdir(parents=True)
            (out / ".state" / "scan").symlink_to(scans)
            first_run = _run_phase(source, out, first, [])
            resume = _run_phase(source, out, added, first_run["kept"])
            results[name] = {"first": first_run, "resume": resume}
        print(f"{'phase':8} {'measure':12} {'baseline':>10} {'current':>10} {'ratio':>7}")
        for phase in ("first", "resume"):
            kept = {name: len(results[name][phase]["kept"]) for name in results}
            for measure in ("seconds", "peak_rss_mb", "anon_mb"):
                old, new = (results[name][phase][measure] for name in ("baseline", "current"))
                print(f"{phase:8} {measure:12} {old:10.1f} {new:10.1f} {new / old:7.2f}")
            print(f"{phase:8} {'kept clips':12} {kept['baseline']:10d} {kept['current']:10d}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
