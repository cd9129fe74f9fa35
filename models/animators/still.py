"""`still`: the reference repeated for every driving frame, the evaluation sweeps' baseline.

It moves nothing, so any animator must beat it on the motion metrics (APD, AKD) to be worth
running. Being an `Animator`, it is framed, encoded (driver's frame rate and audio), named,
resumed and quarantined exactly as the others (with `paste_back`, its unchanged crop is pasted
back onto the whole reference).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from portraitflow.models.animators.base import Animator, DrivingWindow, ReferenceInput


class StillAnimator(Animator):
    """The prepared reference crop, once per driving frame. Holds no model and reads no settings."""

    name = "still"
    params = ()

    def animate(
        self, reference: ReferenceInput, windows: Iterator[DrivingWindow], params: dict[str, Any]
    ) -> Iterator[np.ndarray]:
        for window in windows:
            yield np.repeat(reference.crop[None], len(window.crops), axis=0)
