"""Sweep files: a grid and/or a list of generation configs over one evaluation dataset.

```yaml
name: warp-vs-still
dataset: {type: folder, path: ../shared/media, include: ["liveportrait_d1*.mp4"]}
grid: {backend: [warp], pose_multiplier: [0.5, 1.0], expression_multiplier: [1.0, 1.5]}
configs:                     # explicit configs, added to the grid's
  - {backend: still}
evaluate: {protocol: self, max_seconds: 2, rank_by: apd}   # overrides of the evaluate section
```

Each config gets two deterministic hashes. Its generation hash covers what makes its videos: its
params, the effective generation settings (the global `animate` section under them, as generation
names its outputs), the face-analysis settings, the dataset, the evaluate settings that make the
jobs (`JOB_SETTINGS`) and the code version; it names the folder of its videos, which configs that
differ only in how they are scored share. Its config hash adds the scoring settings (the other
evaluate settings, learned-metric networks by their files' fingerprint); it names the folder of its
scores under that one and tags its MLflow run, so a resumed sweep recognises configs it has already
finished, and a rerun with other scoring settings scores the same videos again instead of making them again.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from portraitflow.jobs.config import PortraitFlowConfig, load_yaml_file, validation_problems
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.jobs.config.fields import ConfigModel, operational
from portraitflow.jobs.runtime import code_version
from portraitflow.models.animators.registry import check_settings, resolve_backend
from portraitflow.operators.eval_dataset import DatasetSpec
from portraitflow.operators.generation_jobs import input_fingerprint, output_settings
from portraitflow.operators.metrics_learned import LEARNED_METRICS

#: evaluate fields that do not change a config's numbers, left out of its hash
_NOT_HASHED = operational(EvaluateConfig)
#: evaluate fields that decide which jobs a config's videos are made for (`dataset_jobs` reads them);
#: every other hashed evaluate field changes only how the videos are scored
JOB_SETTINGS = ("protocol", "max_seconds", "max_videos")
#: animate settings that decide whether a job runs, not what its video holds: out of output names,
#: in a config's numbers (a job that does not run scores as failed)
JOB_GATES = ("min_face_px", "min_face_fraction")
log = logging.getLogger(__name__)


class SweepSpec(ConfigModel):
    name: str = Field("sweep", description="Name of the parent MLflow run.")
    dataset: DatasetSpec
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Params whose cartesian product is swept.")
    configs: list[dict[str, Any]] = Field(default_factory=list, description="Explicit configs, added to the grid's.")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="Overrides of the evaluate config section.")

    @field_validator("grid")
    @classmethod
    def _no_empty_axis(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """An empty list makes the product empty: the grid's configs vanished beside `configs`."""
        empty = [name for name, values in grid.items() if not values]
        if empty:
            raise ValueError(f"{', '.join(empty)}: an empty list makes no config of the grid (give values, or "
                             "leave the parameter out)")
        return grid


def load_sweep(path: str | Path) -> SweepSpec:
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a mapping (name, dataset, grid, configs, evaluate)")
    return SweepSpec.model_validate(data)


def expand_configs(spec: SweepSpec, warn_repeats: bool = False) -> list[dict[str, Any]]:
    """Grid product then explicit configs, duplicates dropped (each with a warning when
    `warn_repeats`: the sweep's check, once per run); each needs a `backend`."""
    keys = sorted(spec.grid)
    grid = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))] if keys else []
    configs, seen = [], set()
    for params in grid + list(spec.configs):
        if "backend" not in params:
            raise ValueError(f"sweep config {params} has no `backend`")
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            if warn_repeats:
                log.warning("sweep config %s is listed twice: it runs once", config_label(params))
        else:
            seen.add(key)
            configs.append(dict(params))
    if not configs:
        raise ValueError("the sweep has no configs: give `grid` and/or `configs`")
    return configs


def effective_evaluate(base: EvaluateConfig, spec: SweepSpec) -> EvaluateConfig:
    return EvaluateConfig.model_validate({**base.model_dump(), **spec.evaluate})


def generation_hash(params: dict[str, Any], dataset: DatasetSpec, evaluate: EvaluateConfig,
                    cfg: PortraitFlowConfig) -> str:
    """12 hex digits that change whenever anything that changes this config's videos changes: not
    its scoring settings, so configs that differ only in those share their videos."""
    payload = {"params": params, "generation": generation_settings(params, cfg), "face": cfg.face.result_settings(),
               "dataset": dataset.model_dump(), "jobs": {name: getattr(evaluate, name) for name in JOB_SETTINGS},
               "version": code_version()}
    return _digest(payload)


def config_hash(params: dict[str, Any], dataset: DatasetSpec, evaluate: EvaluateConfig, cfg: PortraitFlowConfig) -> str:
    """12 hex digits that change whenever anything that changes this config's numbers changes: its
    `generation_hash` and its scoring settings."""
    scoring = {k: v for k, v in _evaluate_settings(evaluate).items() if k not in JOB_SETTINGS}
    return _digest({"generation": generation_hash(params, dataset, evaluate, cfg), "scoring": scoring})


def sweep_hash(spec: SweepSpec, evaluate: EvaluateConfig, cfg: PortraitFlowConfig) -> str:
    """Identifies the parent run a rerun of the same sweep resumes (`evaluate` is the effective one, so
    settings that do not change numbers, such as --max-parallel, never start a new parent; other
    generation, face or scoring settings do, like another sweep file)."""
    payload = {"spec": spec.model_dump(exclude={"evaluate"}), "evaluate": _evaluate_settings(evaluate),
               "generation": [generation_settings(params, cfg) for params in expand_configs(spec)],
               "face": cfg.face.result_settings()}
    return _digest(payload)


def _evaluate_settings(evaluate: EvaluateConfig) -> dict[str, Any]:
    """The evaluate settings that change numbers, each learned-metric network as the fingerprint of
    its file (`input_fingerprint`): another export at the same path scores otherwise."""
    settings = evaluate.model_dump(exclude=_NOT_HASHED)
    for field, _ in LEARNED_METRICS.values():
        if settings[field]:
            settings[field] = input_fingerprint(str(Path(settings[field]).expanduser()))
    return settings


def generation_settings(params: dict[str, Any], cfg: PortraitFlowConfig) -> dict[str, Any] | None:
    """What makes a config's videos: its backend and `output_settings` (what names generation's
    outputs, weights by their fingerprint), and which jobs run (`JOB_GATES`: not in the names, but
    in the numbers). None for params that are refused: that config fails before it makes anything."""
    try:
        settings = config_settings(params, cfg)
    except ValueError:
        return None
    backend = resolve_backend(settings)
    generation = {"backend": backend, **output_settings(backend, settings),
                  **{name: getattr(settings, name) for name in JOB_GATES}}
    if not settings.paste_back:  # it only scales pasted-back outputs (nor does it name crop-only ones)
        generation.pop("max_output_side", None)
    return generation


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_label(params: dict[str, Any]) -> str:
    """A short readable name: backend first, then the other params as key=value."""
    rest = [f"{k}={v}" for k, v in sorted(params.items()) if k != "backend"]
    return f"{params['backend']}[{','.join(rest)}]" if rest else str(params["backend"])


def config_settings(params: dict[str, Any], cfg: PortraitFlowConfig) -> AnimateConfig:
    """The animate settings of one sweep config: `cfg.animate` overridden by its params, validated.

    ValueError naming any unknown or invalid param (one line each, `validation_problems`), or one the
    config's backend does not read (`registry.check_settings`; `still` reads only the framing and
    encoding every backend reads). Such a param, a typo or a setting of another backend, is refused
    rather than ignored, so two configs never differ only in a label (and a run).
    """
    try:
        settings = cfg.animate.model_validate({**cfg.animate.model_dump(), **params})
    except ValidationError as exc:
        raise ValueError(validation_problems(exc)) from None
    check_settings(resolve_backend(settings), params)
    return settings
