"""Which settings are operational: they change where and how fast work runs and what is recorded,
never what it writes. Marked on the field itself, so a new speed-only setting is declared once, and
resume checks, scan fingerprints, output names and sweep hashes all leave it out."""
from __future__ import annotations

from pydantic import BaseModel

#: `Field(..., json_schema_extra=OPERATIONAL)` marks an operational setting
OPERATIONAL = {"operational": True}


def operational(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` marked OPERATIONAL."""
    return frozenset(name for name, field in model.model_fields.items()
                     if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("operational"))
