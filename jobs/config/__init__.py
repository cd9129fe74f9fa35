"""Typed configuration: one section per flow, loaded from YAML with dotted CLI overrides.

Every field has a default and a description; `portraitflow config show` prints the effective
values, and docs/config.md is generated from the same models, so the docs never drift.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.jobs.config.face import FaceConfig
from portraitflow.jobs.config.runtime import MLflowConfig, RayConfig
from portraitflow.jobs.config.train_data import TrainDataConfig


class PortraitFlowConfig(BaseModel):
    """The whole effective configuration of one invocation."""

    model_config = ConfigDict(extra="forbid")

    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    face: FaceConfig = Field(default_factory=FaceConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    animate: AnimateConfig = Field(default_factory=AnimateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    train_data: TrainDataConfig = Field(default_factory=TrainDataConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.field=value` into its key path and a YAML-typed value; an empty value is
    None, so `field=` unsets an optional field (the docs' "Empty: ...")."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.field=value")
    key, raw = text.split("=", 1)
    path = _key_path(key)
    if not path:
        raise ValueError(f"override {text!r} has an empty key")
    return path, yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(
    data: dict[str, Any], overrides: list[str], values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` override set, then each `values` entry
    (`"a.b.c": value`, already typed: CLI flags, whose strings must not go through YAML)."""
    merged = _deep_copy(data)
    pairs = [(text, *parse_override(text)) for text in overrides]
    pairs += [(key, _key_path(key), value) for key, value in (values or {}).items()]
    for text, path, value in pairs:
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return merged


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> PortraitFlowConfig:
    """Load the YAML file (if any), apply overrides, then typed `values`, validate. Unknown keys are errors."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections")
        data = loaded or {}
    return PortraitFlowConfig.model_validate(apply_overrides(data, overrides or [], values))


def _key_path(key: str) -> list[str]:
    return [part for part in key.strip().split(".") if part]


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
