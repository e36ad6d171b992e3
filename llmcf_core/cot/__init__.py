"""Chain-of-thought (CoT) generation over the training samples (METHOD.md, offline step 2).

Public surface:

- :func:`generate_cot_partition` (``pipeline``): the whole stage for one day partition: pool
  selection, prompts, generation in committed blocks (transformers actor pool or vLLM), the
  data check and publication of the run's version (``CURRENT`` moves only by promotion,
  ``llmcf_core.retrieval.promote``). ``jobs.generate_cot`` is its CLI.
- :func:`check_cot` (``check``): the GX suite run before publishing.
- :func:`verify_cot_published` (``layout``): the gate a DAG check task calls after the job.
- :func:`resolve_cot_model`, :func:`read_current`, :func:`version_dir` (``layout``): where
  versions and models live.

Importing this package is cheap: submodules load on first use (torch, transformers, Ray and
GX only where generation or checks run; vLLM only inside the vLLM backend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmcf_core.cot.check import check_cot
    from llmcf_core.cot.pipeline import CotResult, generate_cot_partition
    from llmcf_core.cot.versions import resolve_cot_model, verify_cot_published
    from llmcf_core.layout import read_current, version_dir

__all__ = [
    "CotResult",
    "check_cot",
    "generate_cot_partition",
    "read_current",
    "resolve_cot_model",
    "verify_cot_published",
    "version_dir",
]

_WHERE = {
    "CotResult": "pipeline",
    "generate_cot_partition": "pipeline",
    "check_cot": "check",
    "read_current": "layout",
    "resolve_cot_model": "layout",
    "verify_cot_published": "layout",
    "version_dir": "layout",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"llmcf_core.cot.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
