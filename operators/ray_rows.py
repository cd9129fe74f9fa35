"""Ray Data batches as plain rows and back, for the stages that take one job or input at a time
(`batch_size=1`): each stage works on dicts of Python values, never on Ray's numpy columns."""
from __future__ import annotations

from typing import Any

import numpy as np


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Ray Data numpy batch -> plain Python rows, numpy scalars unwrapped (json, paths and parquet
    take `str` and `int`, not `np.str_` and `np.int64`)."""
    size = len(next(iter(batch.values())))
    return [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()} for i in range(size)]


def rows_batch(rows: list[dict[str, Any]], dtype: type | None = None) -> dict[str, np.ndarray]:
    """Rows -> a Ray Data numpy batch; `dtype=object` keeps bytes and mixed columns as they are."""
    return {k: np.array([r[k] for r in rows], dtype=dtype) for k in rows[0]}
