"""Typed configuration: one section per flow, loaded from YAML with dotted CLI overrides.

Every field has a default and a description; `portraitflow config show` prints the effective
values, and docs/config.md is generated from the same models, so the docs never drift.
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from portraitflow.jobs.config.fields import ConfigModel

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.jobs.config.face import FaceConfig
from portraitflow.jobs.config.runtime import MLflowConfig, RayConfig
from portraitflow.jobs.config.train_data import TrainDataConfig


class PortraitFlowConfig(ConfigModel):
    """The whole effective configuration of one invocation."""

    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    face: FaceConfig = Field(default_factory=FaceConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    animate: AnimateConfig = Field(default_factory=AnimateConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    train_data: TrainDataConfig = Field(default_factory=TrainDataConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.field=value` into its key path and YAML-typed value, except that a string
    field takes the text as written (`2024`, `no`, `a #1` stay text, as with a flag) unless it is
    quoted. An empty value or `null` is None, so `field=` unsets an optional field (the docs'
    "Empty: ...")."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.field=value")
    key, raw = text.split("=", 1)
    path = _key_path(key)
    if not path:
        raise ValueError(f"override {text!r} has an empty key")
    text_value = raw.strip()
    if not text_value:
        return path, None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if not _is_text_field(path):
            raise ValueError(f"override {text!r} is not valid YAML: {_yaml_problem(exc)}") from exc
        return path, text_value
    if not _is_text_field(path) or value is None:
        return path, value
    quoted = len(text_value) > 1 and text_value[0] == text_value[-1] and text_value[0] in "'\""
    return path, value if quoted and isinstance(value, str) else text_value


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


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated within one mapping: PyYAML keeps the last one
    silently, so a second `dataset:` or `pose_multiplier:` replaced the first without a word."""


def _unique_key_mapping(loader: _UniqueKeySafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: flattened by construct_mapping, as before
            continue
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeySafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_key_mapping)


def load_yaml_file(path: str | Path) -> Any:
    """A YAML file's data, read as `yaml.safe_load` does, with a repeated key refused
    (a `yaml.YAMLError` that marks where)."""
    return yaml.load(Path(path).read_text(), Loader=_UniqueKeySafeLoader)


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> PortraitFlowConfig:
    """Load the YAML file (if any), apply overrides, then typed `values`, validate. Unknown keys are errors."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = load_yaml_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the config file: {getattr(exc, 'strerror', None) or exc}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections")
        data = loaded or {}
    try:
        return PortraitFlowConfig.model_validate(apply_overrides(data, overrides or [], values))
    except ValidationError as exc:
        from_file = _failing_in(data) if path is not None else set()
        raise ValueError(validation_problems(exc, model=PortraitFlowConfig,
                                             source=lambda loc: f"{path}: " if loc in from_file else "")) from exc


def _failing_in(data: dict[str, Any]) -> set[tuple]:
    """The fields a config file's own values (`data`) fail on: a problem there is said with the
    file's name, which a team config beside several `--set`s would leave to guess."""
    try:
        PortraitFlowConfig.model_validate(data)
    except ValidationError as alone:
        return {error["loc"] for error in alone.errors()}
    return set()


def validation_problems(exc: ValidationError, within: str = "", model: type[BaseModel] | None = None,
                        source: Callable[[tuple], str] | None = None) -> str:
    """Pydantic's report on one line, `field: what is wrong (got value)` per problem (after
    `source(loc)`, where the value came from, when given), fields named
    from `within` (a section): its own text spreads each over three lines and links its docs. With
    the validated `model`, an unknown name comes with the nearest it has (`curat` -> `curate`)."""
    lines = []
    for error in exc.errors():
        field = ".".join([within, *map(str, error["loc"])] if within else map(str, error["loc"]))
        message = "no such setting" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and model is not None and (near := nearest_field(model, error["loc"])):
            message += f" (did you mean {' or '.join(map(repr, near.split(' or ')))}?)"
        got = "" if error["type"] in ("value_error", "missing") else f" (got {error['input']!r})"
        lines.append(f"{source(error['loc']) if source else ''}{field + ': ' if field else ''}{message}{got}")
    return "; ".join(lines)


def nearest_field(model: type[BaseModel], loc: tuple) -> str | None:
    """The field of the section `loc` is in whose name is closest to its last part, if any is close."""
    import difflib

    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    if len(loc) == 1:  # a field given without its section: the sections that have it
        sections = [name for name, field in model.model_fields.items()
                    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
                    and str(loc[0]) in field.annotation.model_fields]
        if sections:
            return " or ".join(f"{section}.{loc[0]}" for section in sections)
    near = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return near[0] if near else None


def _is_text_field(path: list[str]) -> bool:
    """Whether `path` names a `str` or `str | None` field of the config (the text is its value)."""
    model: type[BaseModel] = PortraitFlowConfig
    for part in path[:-1]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    field = model.model_fields.get(path[-1])
    return field is not None and field.annotation in (str, str | None)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where (its own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return " ".join(f"{getattr(exc, 'problem', None) or exc}{where}".split())


def _key_path(key: str) -> list[str]:
    return [part for part in key.strip().split(".") if part]


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
