"""Settings of the curate flow."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CurateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
