"""From generated candidates to one CoT row: clean, validate, score, keep the best.

Shared by both backends (they only produce candidate texts). The best-of-N score follows the
paper's four criteria with cheap text heuristics, each in [0, 1], averaged:

- coherence: distinct word-trigram ratio (repetition loops score low), lower when truncated;
- completeness: the four asked-for points (numbered points and aspect words) are present;
- relevance: the target item's title words and genres are mentioned;
- consistency: with a label-conditioned prompt, the wording agrees with the known outcome.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmcf_core.cot.prompt import TEMPLATE_MARKERS

FINISH_STOP, FINISH_LENGTH, FINISH_ERROR = "stop", "length", "error"

_WORDS = re.compile(r"[a-z0-9']+")
_ASPECTS = (
    ("profile", "history", "prefer", "taste", "tend", "usually", "enjoy"),
    ("feature", "genre", "theme", "style", "story", "plot"),
    ("match", "fit", "align", "consistent", "similar", "suit"),
    ("divers", "variety", "new", "explore", "different", "novel", "repeat"),
)
_NUMBERED = [re.compile(rf"(?m)^\s*\**{n}[.)]") for n in range(1, 5)]
_NEGATIVE = re.compile(
    r"\b(?:not|n't|never|no longer|unlikely|dislike[sd]?|poor|mismatch|doesn't|didn't|won't)\b", re.IGNORECASE
)
_POSITIVE = re.compile(
    r"\b(?:like[sd]?|enjoy(?:s|ed)?|appeal(?:s|ed)?|match(?:es|ed)?|fits?|love[sd]?)\b", re.I
)


@dataclass(frozen=True)
class Candidate:
    index: int
    text: str | None
    n_tokens: int
    finish_reason: str
    error: str | None = None


def text_problem(text: str | None, *, min_chars: int, forbidden: Sequence[str]) -> str | None:
    """Why a generated text is unusable (empty, too short, echoes the prompt/template), or None."""
    body = (text or "").strip()
    if not body:
        return "empty generation"
    if len(body) < min_chars:
        return f"too short: {len(body)} chars < {min_chars}"
    for marker in forbidden:
        if marker in body:
            return f"echoes the prompt or template: {marker!r}"
    found = TEMPLATE_MARKERS.search(body)
    if found:
        return f"echoes the prompt or template: {found.group(0)!r}"
    return None


def _coherence(words: list[str], finish_reason: str) -> float:
    if len(words) < 3:
        return 0.0
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    distinct = len(set(trigrams)) / len(trigrams)
    return distinct * (1.0 if finish_reason == FINISH_STOP else 0.75)


def _completeness(text: str, lower: str) -> float:
    aspects = sum(any(k in lower for k in keys) for keys in _ASPECTS) / len(_ASPECTS)
    numbered = sum(bool(p.search(text)) for p in _NUMBERED) / len(_NUMBERED)
    return 0.5 * aspects + 0.5 * numbered


def _relevance(lower: str, terms: Sequence[str]) -> float:
    if not terms:
        return 0.5
    hits = sum(t in lower for t in terms)
    return min(1.0, hits / min(len(terms), 3))


def _consistency(text: str, label: int | None) -> float:
    if label is None:
        return 1.0  # without the label in the prompt, agreeing with it is not asked for
    neg, pos = len(_NEGATIVE.findall(text)), len(_POSITIVE.findall(text))
    if neg == 0 and pos == 0:
        return 0.5
    if label == 1:
        return 1.0 if pos > neg else 0.5 if pos == neg else 0.0
    return 1.0 if neg > 0 else 0.0


def score_text(text: str, *, finish_reason: str, terms: Sequence[str], label: int | None) -> float:
    """Heuristic quality of one CoT in [0, 1] (see module docstring)."""
    lower = text.lower()
    words = _WORDS.findall(lower)
    parts = (
        _coherence(words, finish_reason),
        _completeness(text, lower),
        _relevance(lower, terms),
        _consistency(text, label),
    )
    return float(sum(parts) / len(parts))


def best_of(
    candidates: Sequence[Candidate],
    *,
    label: int,
    terms: Sequence[str],
    label_conditioned: bool,
    min_chars: int,
    forbidden: Sequence[str],
) -> dict[str, Any]:
    """cot_text, n_tokens, finish_reason, score (None for one candidate), error of the best candidate."""
    usable: list[tuple[float, int, Candidate, str]] = []
    problems: list[str] = []
    for cand in sorted(candidates, key=lambda c: c.index):
        problem = cand.error or text_problem(cand.text, min_chars=min_chars, forbidden=forbidden)
        if problem:
            problems.append(f"candidate {cand.index}: {problem}")
            continue
        text = (cand.text or "").strip()
        score = score_text(
            text, finish_reason=cand.finish_reason, terms=terms, label=label if label_conditioned else None
        )
        usable.append((score, -cand.index, cand, text))
    if not usable:
        return {
            "cot_text": None,
            "n_tokens": 0,
            "finish_reason": FINISH_ERROR,
            "score": None,
            "error": "; ".join(problems)[:2000] or "no candidates",
        }
    score, _, cand, text = max(usable, key=lambda u: (u[0], u[1]))
    return {
        "cot_text": text,
        "n_tokens": int(cand.n_tokens),
        "finish_reason": cand.finish_reason,
        "score": score if len(candidates) > 1 else None,
        "error": None,
    }
