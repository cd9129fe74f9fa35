"""The reference portrait of a generation job: a thumbnail is refused, not upscaled into a video."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face.factory import create_analyzer
from portraitflow.operators.reference_portrait import NoFace, prepare_reference


def test_a_face_smaller_than_min_face_px_fails_the_reference() -> None:
    """A 96-px portrait (a 19-px face) finished `ok`: a featureless 512x512 upscale."""
    analyzer = create_analyzer(FaceConfig())
    photo = skimage.data.astronaut()
    thumbnail = np.asarray(Image.fromarray(photo).resize((96, 96), Image.LANCZOS))
    with pytest.raises(NoFace, match=r"face too small \(\d+ px; animate.min_face_px=64\)"):
        prepare_reference(thumbnail, analyzer, 512, min_face_px=64)
    assert prepare_reference(thumbnail, analyzer, 512, min_face_px=0).reference.crop.shape == (512, 512, 3)
    assert prepare_reference(photo, analyzer, 512, min_face_px=64).reference.crop.shape == (512, 512, 3)
