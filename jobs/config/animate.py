"""Settings of the animate flow."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AnimateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
