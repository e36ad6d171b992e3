"""Which samples get a CoT: the partition's train samples, optionally a deterministic fraction.

A sample is in a fraction ``f`` when the first 8 bytes of ``sha256("cot-pool:" + sample_id)``,
read as a number in [0, 1), are below ``f``. Reruns and backfills pick the same samples, a
larger fraction contains every smaller one, and no state is needed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

_SALT = b"cot-pool:"
_SCALE = float(2**64)


def hash_unit(sample_id: str) -> float:
    """A stable number in [0, 1) for a sample id."""
    digest = hashlib.sha256(_SALT + str(sample_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_fraction(sample_ids: pd.Series | list[str], fraction: float) -> np.ndarray:
    if fraction >= 1.0:
        return np.ones(len(sample_ids), dtype=bool)
    return np.fromiter((hash_unit(s) < fraction for s in sample_ids), dtype=bool, count=len(sample_ids))


def select_pool(samples: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Train-split samples within ``fraction``, in the partition's order."""
    train = samples[samples["split"] == "train"]
    return train[in_fraction(train["sample_id"].tolist(), fraction)].reset_index(drop=True)
