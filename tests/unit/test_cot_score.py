"""Cleaning, validating and scoring candidates; keeping the best of N."""

from __future__ import annotations

from llmcf_core.cot.score import Candidate, best_of, score_text, text_problem

GOOD = (
    "1. The user's profile: the history shows a taste for crime thrillers.\n"
    "2. The target item's features: Heat is a crime thriller with a strong plot.\n"
    "3. It matches the user's profile well, so the user liked it.\n"
    "4. Diversity: it repeats a familiar genre rather than exploring a new one."
)
LOOP = "the the the the the the the the the the the the the the the the the the"
FORBIDDEN = ["Write your reasoning as four numbered points", "<|im_start|>"]


def test_text_problem():
    assert text_problem("", min_chars=1, forbidden=[]) == "empty generation"
    assert text_problem("   \n", min_chars=1, forbidden=[]) == "empty generation"
    assert text_problem("short", min_chars=10, forbidden=[]).startswith("too short")
    assert "echoes" in text_problem("ok <|im_start|>user hi", min_chars=1, forbidden=FORBIDDEN)
    assert "echoes" in text_problem(
        "Write your reasoning as four numbered points: 1.", min_chars=1, forbidden=FORBIDDEN
    )
    assert "echoes" in text_problem("fine [INST] text", min_chars=1, forbidden=[])  # generic chat markers
    assert text_problem(GOOD, min_chars=16, forbidden=FORBIDDEN) is None


def test_score_prefers_complete_relevant_consistent_text():
    terms = ["heat", "crime", "thriller"]
    good = score_text(GOOD, finish_reason="stop", terms=terms, label=1)
    assert 0.0 <= good <= 1.0
    assert good > score_text(LOOP, finish_reason="length", terms=terms, label=1)
    assert good > score_text(GOOD, finish_reason="length", terms=terms, label=1)  # truncated
    assert good > score_text(
        GOOD.replace("Heat", "It").replace("crime", "x"), finish_reason="stop", terms=terms, label=1
    )
    negative = GOOD.replace("so the user liked it", "yet the user did not like it")
    assert score_text(negative, finish_reason="stop", terms=terms, label=0) > score_text(
        GOOD, finish_reason="stop", terms=terms, label=0
    )


def test_best_of_keeps_the_best_and_records_failures():
    cands = [
        Candidate(0, LOOP, 18, "length"),
        Candidate(1, "  " + GOOD + "\n", 60, "stop"),
        Candidate(2, None, 0, "error", "RuntimeError: boom"),
    ]
    kwargs = {
        "label": 1,
        "terms": ["heat"],
        "label_conditioned": True,
        "min_chars": 16,
        "forbidden": FORBIDDEN,
    }
    best = best_of(cands, **kwargs)
    assert best["cot_text"] == GOOD and best["n_tokens"] == 60 and best["finish_reason"] == "stop"
    assert best["error"] is None and 0 < best["score"] <= 1
    single = best_of([Candidate(0, GOOD, 60, "stop")], **kwargs)
    assert single["score"] is None  # no best-of-N score with one candidate
    failed = best_of([Candidate(0, "", 0, "stop"), Candidate(1, None, 0, "error", "OOM")], **kwargs)
    assert failed["cot_text"] is None and failed["finish_reason"] == "error" and failed["n_tokens"] == 0
    assert failed["error"] == "candidate 0: empty generation; candidate 1: OOM"
