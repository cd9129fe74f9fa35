"""A partial duplicate's own footage, cut out into clips of their own.

A `partial_duplicate` is mostly footage the corpus holds, but the rest of it may be found nowhere
else: the end of a talk whose start an excerpt kept, the minutes a re-upload added. Each stretch of
it found in no kept clip that lasts `min_clip_seconds` becomes a clip (`duplicate_keep_unique`):
decided as any clip is, in its place in the decision order (operators/corpus_decisions.py), and
rendered from the parent's scan arrays cut to its frames. Its key names its own time range;
`cut_from` names the parent. It shares the parent's crop box, identity embedding and quality
measures (taken on the whole parent, which passed every filter); its motion, footage signature and
reference frame are its own.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from portraitflow.operators.inputs import clip_key
from portraitflow.operators.motion import motion_table
from portraitflow.operators.overlap import content_signature
from portraitflow.operators.reference_frame import reference_index

#: what the duplicate checks add to a clip's measures: a cut clip gets its own
DUPLICATE_MEASURES = ("duplicate_similarity", "overlap_s", "overlap_share")
#: a scan clip's arrays with a row per frame
PER_FRAME = ("boxes", "kps", "landmarks", "pose", "thumbnails")


def unique_clip(parent: dict[str, Any], input_key: str, first: int, last: int, fps: float) -> dict[str, Any]:
    """The clip of frames [first, last) of `parent` (a scan clip, counted from its start): its own
    key and time range, the parent's measures less what the duplicate checks found in the parent,
    and `cut`, what rendering cuts from the parent's arrays (`cut_arrays`)."""
    start, end = parent["start"] + first, parent["start"] + last
    measures = {k: v for k, v in parent["measures"].items() if k not in DUPLICATE_MEASURES}
    return dict(parent, start=start, end=end, key=clip_key(input_key, start / fps, end / fps), measures=measures,
                cut_from=parent["key"], cut=[first, last], reason=None, matched_key=None)


def cut_arrays(arrays: dict[str, np.ndarray], first: int, last: int, frame_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """A scan clip's arrays (`load_clip_arrays`) for its frames [first, last): per-frame rows cut,
    the motion table and footage signature made of them, the parent's reference frame where it
    falls inside, else the best of the cut (`reference_index`: every frame taken as detected and
    identity-checked, as the whole parent passed its identity checks)."""
    cut = {k: v for k, v in arrays.items() if k not in PER_FRAME}
    cut.update({k: arrays[k][first:last] for k in PER_FRAME if k in arrays})
    cut["motion"] = motion_table(cut["landmarks"], cut["kps"])
    cut["signature"] = content_signature(cut["thumbnails"].astype(np.float32))
    parent_ref = int(arrays["ref_index"])
    if first <= parent_ref < last:
        ref = parent_ref - first
    else:
        every = np.ones(last - first, bool)
        ref = reference_index(cut["pose"], cut["landmarks"], every, cut["boxes"], frame_hw, every)
    cut["ref_index"] = np.array(ref)
    return cut
