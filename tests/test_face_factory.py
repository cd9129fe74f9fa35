from __future__ import annotations

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face.factory import create_analyzer
from portraitflow.models.face.opencv_backend import OpenCVAnalyzer


def test_threshold_override_applies_to_that_analyzer_only() -> None:
    tuned = create_analyzer(FaceConfig(same_person_threshold=0.7))
    default = create_analyzer(FaceConfig())
    assert tuned.same_person_threshold == 0.7
    assert default.same_person_threshold == OpenCVAnalyzer.same_person_threshold != 0.7
