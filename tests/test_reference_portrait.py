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


@pytest.mark.parametrize("photo", ["inspireface_pose_left_face.jpeg", "deca_AFLW2000_image00181.jpg"])
def test_a_portrait_in_profile_reads_turned_the_way_it_is(media_dir, photo: str) -> None:
    """Both face the image's left (about -80 degrees); the landmark fit read them -23 and +3."""
    from portraitflow.models.face.images import load_image

    reference = prepare_reference(load_image(str(media_dir / photo)).rgb, create_analyzer(FaceConfig()), 512).reference
    assert reference.pose[0] < -40.0 and np.isfinite(reference.pose).all(), reference.pose
