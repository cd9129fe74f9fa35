"""What every settings model shares (`ConfigModel`), and which settings are operational: they
change where and how fast work runs and what is recorded, never what it writes. Marked on the
field itself, so a new speed-only setting is declared once, and resume checks, scan fingerprints,
output names and sweep hashes all leave it out."""
from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, model_validator


class ConfigModel(BaseModel):
    """A settings model: unknown names, non-finite numbers and true/false for a number are refused
    (pydantic took `true` as 1: a seed of 1, one denoising step, fps 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            wrong = [name for name, value in data.items() if isinstance(value, bool) and name in cls.model_fields
                     and not _takes_bool(cls.model_fields[name].annotation)]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: true/false is not a value of {'these' if len(wrong) > 1 else 'this'} "
                                 "setting")
        return data


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or any(_takes_bool(arg) for arg in get_args(annotation))

#: `Field(..., json_schema_extra=OPERATIONAL)` marks an operational setting
OPERATIONAL = {"operational": True}


def operational(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` marked OPERATIONAL."""
    return frozenset(name for name, field in model.model_fields.items()
                     if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("operational"))
