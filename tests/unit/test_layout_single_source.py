"""Only ``llmcf_core.layout`` spells where artifacts live (issue: one layout module).

Scans the pipeline's code (library, jobs, DAGs, Airflow glue) for the ways a folder name gets
spelled: a layout name joined with ``/``, a literal handed to ``artifact()`` / ``partition()`` /
``quarantine()``, a ``dt=`` partition folder written out, a ``glob("dt=*")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmcf_core import layout

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["llmcf_core", "jobs", "dags", "llmcf_airflow"]
NAMES = {
    layout.SAMPLES,
    layout.ITEMS,
    layout.USERS,
    layout.INTERACTIONS,
    layout.QUARANTINE,
    layout.STAGING,
    layout.COT,
    layout.CURRENT_FILE,
    layout.BLOCKS_DIR,
    layout.EMBEDDINGS,
    layout.POOL,
    layout.MODELS,
    layout.REC_MODELS,
    layout.RECGEN_MODELS,
    layout.RUNS,
    layout.CANDIDATES,
    layout.INSTRUCTIONS,
    *layout.NEIGHBORS.values(),
}
PATH_CALLS = {"artifact", "partition", "quarantine"}


def _str(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def spellings(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                text = _str(side)
                if text is not None and (text.split("/")[0] in NAMES or text.startswith("dt=")):
                    found.append((node.lineno, f"joins {text!r}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args = [_str(a) for a in node.args]
            named = [a for a in args if a is not None and (a in NAMES or node.func.attr == "artifact")]
            if node.func.attr in PATH_CALLS and named:  # str.partition("=") is not a path
                found.append((node.lineno, f"{node.func.attr}({named[0]!r})"))
            if node.func.attr in ("glob", "rglob") and args and (args[0] or "").startswith("dt="):
                found.append((node.lineno, f"glob({args[0]!r})"))
    return found


def _files() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if p != ROOT / "llmcf_core" / "layout.py"]


def test_the_scan_sees_a_spelled_folder():
    sample = 'root = home / "samples" / f"dt={day}"\npaths.artifact("cot")\nroot.glob("dt=*")\n'
    assert sorted(what for _, what in spellings(sample)) == [
        "artifact('cot')",
        "glob('dt=*')",
        "joins 'dt='",
        "joins 'samples'",
    ]
    assert spellings('key, _, value = pair.partition("=")\n') == []


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_layout_spells_an_artifact_folder(path):
    assert spellings(path.read_text(encoding="utf-8")) == [], f"{path}: ask llmcf_core.layout"
