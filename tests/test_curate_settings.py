"""Curate settings: what the config accepts, and which changes an output folder allows on resume."""
from __future__ import annotations

import pytest

from portraitflow.jobs.config import load_config


def test_an_odd_crop_size_is_refused_with_the_reason() -> None:
    """The encoder cuts an odd side to the even one below, while the sample's coordinates kept the odd one."""
    with pytest.raises(ValueError, match=r"crop_size \(333\) must be even"):
        load_config(None, ["curate.crop_size=333"])
    assert load_config(None, ["curate.crop_size=334"]).curate.crop_size == 334
