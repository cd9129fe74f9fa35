"""Settings of the train data flow."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TrainDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
