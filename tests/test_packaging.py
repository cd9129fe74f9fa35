"""The installed layout matches the repository: every package folder is declared in pyproject."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ["jobs", "pipelines", "operators", "models"]


def test_every_package_folder_is_declared() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "portraitflow." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk - declared == set(), "add these packages to [tool.setuptools] packages"
    assert declared - on_disk == set(), "these declared packages have no __init__.py"
