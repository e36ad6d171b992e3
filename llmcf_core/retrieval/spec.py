"""What a pool and its Qdrant collection are built from, and the collection names.

```
Qdrant: collection llmcf_<ds>__<embedder>__<cot version>__g<N> per CoT version and generation;
        alias llmcf_<ds> -> the promoted version's collection (moved by jobs.promote_cot only)
```

A :class:`PoolSpec` says what a pool partition and a collection were built from (dataset,
embedder, dimension, CoT version); the two must agree before a collection is used. Folders are
``llmcf_core.layout``'s.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from llmcf_core.layout import CotVersion

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
URL_ENV = "LLMCF_QDRANT_URL"  # Qdrant server URL for jobs (wins over qdrant.url)


@dataclass(frozen=True)
class PoolSpec:
    """What a pool and its collection are made of; stored in manifests and collection metadata."""

    dataset: str
    embedder: str
    dim: int
    cot_model_version: str
    cot_prompt_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> PoolSpec | None:
        try:
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__})  # type: ignore[index]
        except (KeyError, TypeError):
            return None

    @property
    def cot(self) -> CotVersion:
        return CotVersion(self.cot_model_version, self.cot_prompt_version)

    @property
    def collection_base(self) -> str:
        tag = _UNSAFE.sub("-", f"{self.embedder}__{self.cot.folder}")
        return f"{alias_name(self.dataset)}__{tag}"


def alias_name(dataset: str) -> str:
    return f"llmcf_{dataset}"


def collection_name(spec: PoolSpec, generation: int) -> str:
    return f"{spec.collection_base}__g{generation}"


def generation_of(name: str, spec: PoolSpec) -> int | None:
    prefix = f"{spec.collection_base}__g"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None
