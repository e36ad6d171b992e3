"""Prompt wording and chat encoding shared by instruction building, training and evaluation.

Rec instruction (METHOD.md, LLM-CF): the fixed instruction, then the user's history item texts
(oldest first) and the target item text; the answer is "Yes" or "No". Item texts come from the items
table (``title: ...; year: ...; genres: ...`` for MovieLens).

Encoding uses the tokenizer's own chat template (one user turn, one assistant turn); the loss is
taken on the response tokens only, which start at ``response_start``. A tokenizer without a chat
template gets a plain "### Instruction / ### Response" layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REC_INSTRUCTION = (
    "Based on the following purchase history of a user, determine whether the user is likely to "
    "purchase the target new item. Answer Yes or No."
)
YES, NO = "Yes", "No"


def rec_prompt(history_texts: Sequence[str], target_text: str) -> str:
    lines = [REC_INSTRUCTION, "", "User's purchase history:"]
    if history_texts:
        lines += [f"{i}. {text}" for i, text in enumerate(history_texts, start=1)]
    else:
        lines.append("(none)")
    lines += ["", f"Target new item: {target_text}"]
    return "\n".join(lines)


def rec_response(label: int) -> str:
    return YES if int(label) == 1 else NO


def _render(tok: Any, prompt: str, response: str | None) -> str:
    if getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if response is None:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": response})
        return tok.apply_chat_template(messages, tokenize=False)
    head = f"### Instruction:\n{prompt}\n\n### Response:\n"
    return head if response is None else head + response + (tok.eos_token or "")


def _ids(tok: Any, text: str) -> list[int]:
    # The rendered template already carries the special tokens as text.
    return list(tok(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tok: Any, prompt: str) -> list[int]:
    """Token ids of the prompt up to where the assistant's answer starts (for scoring/generation)."""
    return _ids(tok, _render(tok, prompt, None))


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    response_start: int  # first position whose token is part of the response (loss from here on)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def encode_chat(tok: Any, prompt: str, response: str) -> Encoded:
    """Prompt + response as one sequence; ``response_start`` splits prompt tokens from response tokens."""
    full = _ids(tok, _render(tok, prompt, response))
    head = encode_prompt(tok, prompt)
    start = 0
    for a, b in zip(head, full, strict=False):  # tokenizers may merge across the boundary
        if a != b:
            break
        start += 1
    return Encoded(full, min(start, len(full) - 1))


def fit_rec_example(
    tok: Any,
    history_texts: Sequence[str],
    target_text: str,
    response: str | None,
    max_length: int,
) -> tuple[str, Encoded] | None:
    """The rec prompt with as many recent history items as fit ``max_length`` tokens (oldest dropped).

    ``response=None`` encodes the prompt only (evaluation); returns None if even no history is too long.
    """
    history = list(history_texts)
    while True:
        prompt = rec_prompt(history, target_text)
        if response is None:
            ids = encode_prompt(tok, prompt)
            enc = Encoded(ids, len(ids))
        else:
            enc = encode_chat(tok, prompt, response)
        if enc.n_tokens <= max_length:
            return prompt, enc
        if not history:
            return None
        # Drop enough of the oldest items at once to converge in a few tries on long histories.
        over = enc.n_tokens - max_length
        per_item = max(1, (enc.n_tokens - len(_ids(tok, target_text))) // (len(history) + 1))
        history = history[min(len(history), max(1, over // per_item)) :]
