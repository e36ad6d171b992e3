"""Quality report of one CoT version over all its published days (``jobs.cot_report``).

Reads every published ``<home>/<ds>/cot/dt=D/<model_version>__<prompt_version>/`` (the columns
of :data:`llmcf_core.cot.blocks.COT_SCHEMA`: ``cot_text``, ``n_tokens``, ``finish_reason``,
``label``, ``error``, ...) and, when present, the pool partitions the embed stage built from that
version (``<ds>/embeddings/<embedder>/pool/dt=D/``, column ``cot_vec``). Writes
``<ds>/cot/_reports/<model_version>__<prompt_version>/quality.json`` and ``quality.md`` (the
``_`` folder is skipped by every reader of version folders and day partitions).

Rows are *failed* when they carry an ``error`` or finish reason ``error`` (no text); every other
row is a *text* and the shares below are shares of texts:

- truncated: finish reason ``length`` (the token budget ended the text);
- short: fewer than :data:`MIN_WORDS` words (an empty text included);
- repetitive: more than :data:`REPEAT_MAX_SHARE` of the word :data:`REPEAT_NGRAM`-grams repeat
  an earlier one in the same text (a generation loop);
- echo: at least :data:`ECHO_MIN_SHARE` of the word :data:`ECHO_NGRAM`-grams occur verbatim in
  the sample's prompt. Prompts are not stored: the reference is rebuilt with ``prompt.py`` (system
  turn + user turn of the version's template) from the sample's *full* stored history, a
  superset of the history the generated prompt held (``prompt_history_items`` and the token
  budget only trim it), so no echo is missed when the configuration changed since;
- degenerate: any of short, repetitive, echo.

Label agreement is measured only for ``-nolabel`` prompts, which end by asking for a verdict
("whether the user is likely to like the target item"); a label-conditioned prompt states the
outcome, so agreement there measures obedience, not reasoning, and is left out. Diversity: mean
pairwise cosine of ``cot_vec`` within each label (a seeded sample of at most
:data:`DIVERSITY_MAX_PER_LABEL` rows) and the cosine between the two label centroids.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmcf_core import fsio, layout, storage
from llmcf_core.config import Settings
from llmcf_core.cot.prompt import TEMPLATES, template, user_message
from llmcf_core.cot.score import FINISH_ERROR, FINISH_LENGTH
from llmcf_core.layout import CotVersion, DataPaths, InvalidArgument, RetrievalPaths, resolve_cot_version
from llmcf_core.retrieval.spec import PoolSpec

# --- thresholds (each rule's constant; docs/cot.md explains them) -----------------------------
# A CoT shorter than this is "short": the v1 prompt asks for four numbered points, which cannot
# fit in 7 words; 8 words is also where the 8-gram echo rule starts to see anything.
MIN_WORDS = 8
# Repetition: share of a text's word 4-grams that repeat an earlier 4-gram of the same text.
# Healthy prose of 20-250 words stays well under 0.1 (a few stock phrases such as "the target
# item"); a loop that fills a third of the text passes 0.3. Chosen over a zlib compression ratio,
# whose value depends on the text's length (the header dominates short texts), so one ratio
# threshold cannot fit 20-word and 250-word CoTs alike.
REPEAT_NGRAM = 4
REPEAT_MAX_SHARE = 0.3
# Echo: share of a text's word 8-grams found verbatim in its (rebuilt) prompt. An 8-word run is
# rarely shared by chance, even with quoted titles ("title: ... year: ... genres: ..." is 6-10
# words, so naming the target item costs at most a few 8-grams); half the text copied is an echo.
ECHO_NGRAM = 8
ECHO_MIN_SHARE = 0.5
# Diversity: at most this many cot_vec rows per label, drawn with this seed (numpy default_rng).
DIVERSITY_MAX_PER_LABEL = 2000
DIVERSITY_SEED = 0
PERCENTILES = (10, 50, 90)
EXAMPLES_PER_FLAG = 3  # sample_ids listed per degenerate flag, to look at
REPORTS_DIR = "_reports"
REPORT_JSON = "quality.json"
REPORT_MD = "quality.md"

_WORD = re.compile(r"[\w']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Verdict of the closing sentence (-nolabel prompts), checked in this order.
_VERDICT_NO_LIKELY = re.compile(
    r"\b(?:unlikely|not\s+(?:\w+\s+)?likely|less\s+likely|likely\s+(?:to\s+)?(?:dislike|not))\b", re.I
)
_VERDICT_LIKELY = re.compile(r"\blikely\b", re.I)
_VERDICT_NO = re.compile(
    r"\b(?:won't|will\s+not|wouldn't|would\s+not|doesn't|does\s+not|not\s+(?:enjoy|like|love)|dislikes?)\b",
    re.I,
)
_VERDICT_YES = re.compile(r"\b(?:enjoy|enjoys|like|likes|love|loves|appeal|appeals)\b", re.I)


# --------------------------------------------------------------------------------------------
# Text rules
# --------------------------------------------------------------------------------------------


def words(text: str | None) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophes); punctuation and quotes dropped."""
    return _WORD.findall((text or "").lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False)) if len(tokens) >= n else []


def repeated_ngram_share(tokens: Sequence[str], n: int = REPEAT_NGRAM) -> float:
    """Share of the word n-grams that repeat an earlier one (0 for fewer than n words)."""
    grams = _ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def echo_share(tokens: Sequence[str], reference: Sequence[str], n: int = ECHO_NGRAM) -> float:
    """Share of the word n-grams of ``tokens`` that occur verbatim in ``reference`` (0 if none)."""
    grams = _ngrams(tokens, n)
    if not grams:
        return 0.0
    hay = f" {' '.join(reference)} "
    return sum(f" {' '.join(g)} " in hay for g in grams) / len(grams)


def stated_verdict(text: str | None) -> int | None:
    """1 (will like) / 0 (will not) from the text's last sentence, None where it states neither."""
    sentences = [s.strip() for s in _SENTENCE_END.split((text or "").strip()) if s.strip()]
    if not sentences:
        return None
    last = sentences[-1]
    if _VERDICT_NO_LIKELY.search(last):
        return 0
    if _VERDICT_LIKELY.search(last):
        return 1
    if _VERDICT_NO.search(last):
        return 0
    if _VERDICT_YES.search(last):
        return 1
    return None


def _stats(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    out: dict[str, float | None] = {"mean": round(float(arr.mean()), 2)}
    for q, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        out[f"p{q}"] = round(float(v), 2)
    return out


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


# --------------------------------------------------------------------------------------------
# Reading a version
# --------------------------------------------------------------------------------------------


def resolve_version(settings: Settings, dataset: str, version: str | None, embedder: str) -> CotVersion:
    """``MODEL__PROMPT`` as given, else the dataset's ``cot/CURRENT`` (InvalidArgument if none)."""
    return resolve_cot_version(RetrievalPaths(settings.home, dataset, embedder), version)


def published_versions(paths: DataPaths) -> list[str]:
    """Every version folder published on at least one day."""
    found: set[str] = set()
    for day in paths.cot_partition_days():
        found.update(paths.cot_versions(day))
    return sorted(found)


def _read_cot(rpaths: RetrievalPaths, version: CotVersion, days: list[dt.date]) -> pd.DataFrame:
    frames = []
    for day in days:
        frame = storage.read_partition(rpaths.cot_partition(day, version)).to_pandas()
        frame["day"] = day
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _references(
    rpaths: RetrievalPaths, version: CotVersion, frame: pd.DataFrame
) -> tuple[list[list[str] | None], str | None]:
    """Per row of ``frame``: the words of its rebuilt prompt (None where it cannot be rebuilt)."""
    refs: list[list[str] | None] = [None] * len(frame)
    try:
        tpl = template(version.prompt_version)
    except InvalidArgument:
        return (
            refs,
            f"prompt version {version.prompt_version!r} is not a known template ({sorted(TEMPLATES)})",
        )
    if not storage.is_published(rpaths.data.items):
        return refs, f"items not published at {rpaths.data.items}"
    items = storage.read_partition(rpaths.data.items, columns=["item_id", "text"]).to_pandas()
    text_of = dict(zip(items["item_id"].astype("int64").tolist(), items["text"].tolist(), strict=True))
    conditioned = version.prompt_version.endswith("-lc")
    frame = frame.reset_index(drop=True)
    missing_days = []
    for day, group in frame.groupby("day", sort=True):
        samples_dir = rpaths.data.samples(day)
        if not storage.is_published(samples_dir):
            missing_days.append(day.isoformat())
            continue
        samples = storage.read_partition(
            samples_dir, columns=["sample_id", "item_id", "history_item_ids", "history_labels"]
        ).to_pandas()
        by_id = {
            sid: (int(item), hist, labs)
            for sid, item, hist, labs in zip(
                samples["sample_id"],
                samples["item_id"],
                samples["history_item_ids"],
                samples["history_labels"],
                strict=True,
            )
        }
        for pos, sid, label in zip(group.index, group["sample_id"], group["label"], strict=True):
            found = by_id.get(sid)
            target = text_of.get(found[0]) if found else None
            if target is None:
                continue
            history = [
                (text_of[int(i)], int(lab))
                for i, lab in zip(found[1], found[2], strict=True)
                if int(i) in text_of
            ]
            user = user_message(tpl, history, target, int(label) if conditioned else None, ())
            refs[pos] = words(f"{tpl.system}\n{user}")
    note = f"samples not published for {', '.join(missing_days)}" if missing_days else None
    return refs, note


# --------------------------------------------------------------------------------------------
# Diversity of the pool's CoT embeddings
# --------------------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    keep = norms > 0
    return x[keep] / norms[keep, None]


def mean_pairwise_cosine(vectors: np.ndarray) -> float | None:
    """Mean cosine over all pairs i < j (closed form on unit rows); None for fewer than 2 rows."""
    unit = _unit_rows(np.asarray(vectors, dtype=np.float64))
    m = len(unit)
    if m < 2:
        return None
    total = unit.sum(axis=0)
    return float(np.clip((total @ total - m) / (m * (m - 1)), -1.0, 1.0))


def _label_sample(vectors: np.ndarray, label: int) -> np.ndarray:
    unit = _unit_rows(np.asarray(vectors, dtype=np.float64))
    if len(unit) > DIVERSITY_MAX_PER_LABEL:
        rng = np.random.default_rng([DIVERSITY_SEED, label])
        unit = unit[np.sort(rng.choice(len(unit), DIVERSITY_MAX_PER_LABEL, replace=False))]
    return unit


def _empty_diversity(embedder: str, reason: str | None) -> dict[str, Any]:
    empty = {"rows": None, "sampled": None, "mean_cosine": None}
    return {
        "embedder": embedder,
        "days": 0,
        "label_0": dict(empty),
        "label_1": dict(empty),
        "centroid_cosine": None,
        "reason": reason,
    }


def diversity(settings: Settings, dataset: str, version: CotVersion, embedder: str) -> dict[str, Any]:
    """Within-label cosine of ``cot_vec`` over the pool partitions built from ``version``."""
    from llmcf_core.retrieval.embed import arrow_to_vectors

    rpaths = RetrievalPaths(settings.home, dataset, embedder)
    labels, vectors, days, dim = [], [], 0, None
    for day in rpaths.pool_days(version):
        spec = PoolSpec.from_dict((storage.read_manifest(rpaths.pool(day, version)) or {}).get("spec"))
        if spec is None or spec.cot != version or (dim is not None and spec.dim != dim):
            continue
        dim = spec.dim
        table = storage.read_partition(rpaths.pool(day, version), columns=["label", "cot_vec"])
        labels.append(table.column("label").to_numpy().astype(np.int64))
        vectors.append(arrow_to_vectors(table.column("cot_vec"), dim))
        days += 1
    if not days:
        return _empty_diversity(
            embedder, f"no pool partition of embedder {embedder!r} built from {version.folder}"
        )
    lab, vec = np.concatenate(labels), np.concatenate(vectors)
    out = _empty_diversity(embedder, None)
    out["days"] = days
    centroids = {}
    for label in (0, 1):
        rows = vec[lab == label]
        sample = _label_sample(rows, label)
        mean = mean_pairwise_cosine(sample)
        out[f"label_{label}"] = {
            "rows": len(rows),
            "sampled": len(sample),
            "mean_cosine": None if mean is None else round(mean, 4),
        }
        if len(sample):
            centroids[label] = sample.mean(axis=0)
    if len(centroids) == 2:
        a, b = centroids[0], centroids[1]
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        out["centroid_cosine"] = round(float(a @ b) / denom, 4) if denom > 0 else None
    return out


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def cot_quality(
    settings: Settings, dataset: str, version: str | None = None, embedder: str | None = None
) -> dict[str, Any]:
    """The quality report of CoT version ``version`` (``MODEL__PROMPT``; None: ``cot/CURRENT``).

    Raises :class:`InvalidArgument` when the version is malformed or has no published day.
    """
    embedder = embedder or settings.embedding.embedder
    cot = resolve_version(settings, dataset, version, embedder)
    rpaths = RetrievalPaths(settings.home, dataset, embedder)
    days = rpaths.cot_days(cot)
    if not days:
        known = published_versions(rpaths.data)
        raise InvalidArgument(
            f"CoT version {cot.folder!r} of {dataset!r} has no published day under {rpaths.cot_root}; "
            f"published versions: {', '.join(known) if known else 'none'}"
        )
    frame = _read_cot(rpaths, cot, days)
    failed = (frame["error"].notna() | (frame["finish_reason"].astype(str) == FINISH_ERROR)).to_numpy()
    ok = frame[~failed].reset_index(drop=True)
    texts = [t if isinstance(t, str) else "" for t in ok["cot_text"]]
    tokens = [words(t) for t in texts]
    n_words = np.array([len(t) for t in tokens], dtype=np.int64)
    n = len(ok)

    short = n_words < MIN_WORDS
    repetitive = np.array([repeated_ngram_share(t) > REPEAT_MAX_SHARE for t in tokens], dtype=bool)
    refs, echo_note = _references(rpaths, cot, ok)
    checked = np.array([r is not None for r in refs], dtype=bool)
    echo = np.array(
        [r is not None and echo_share(t, r) >= ECHO_MIN_SHARE for t, r in zip(tokens, refs, strict=True)],
        dtype=bool,
    )
    degenerate = short | repetitive | echo
    truncated = (ok["finish_reason"].astype(str) == FINISH_LENGTH).to_numpy()
    labels = ok["label"].astype(int).to_numpy()
    ids = ok["sample_id"].astype(str).to_numpy()

    def flag(mask: np.ndarray, total: int | None = None) -> dict[str, Any]:
        count = int(mask.sum())
        return {
            "count": count,
            "share": _share(count, n if total is None else total),
            "examples": ids[mask][:EXAMPLES_PER_FLAG].tolist(),
        }

    return {
        "dataset": dataset,
        "version": cot.folder,
        "model_version": cot.model_version,
        "prompt_version": cot.prompt_version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "days": {"count": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat()},
        "rows": len(frame),
        "failed": int(failed.sum()),
        "texts": n,
        "label_1_share": _share(int((labels == 1).sum()), n),
        "tokens": _stats(ok["n_tokens"].to_numpy()),
        "words": _stats(n_words),
        "truncated": flag(truncated),
        "degenerate": {
            "short": flag(short),
            "repetitive": flag(repetitive),
            "echo": {**flag(echo, int(checked.sum())), "checked": int(checked.sum()), "note": echo_note},
            "any": flag(degenerate),
        },
        "label_agreement": _label_agreement(cot, texts, labels, truncated),
        "diversity": diversity(settings, dataset, cot, embedder),
        "thresholds": {
            "min_words": MIN_WORDS,
            "repeat_ngram": REPEAT_NGRAM,
            "repeat_max_share": REPEAT_MAX_SHARE,
            "echo_ngram": ECHO_NGRAM,
            "echo_min_share": ECHO_MIN_SHARE,
            "diversity_max_per_label": DIVERSITY_MAX_PER_LABEL,
            "diversity_seed": DIVERSITY_SEED,
        },
    }


def _label_agreement(
    cot: CotVersion, texts: list[str], labels: np.ndarray, truncated: np.ndarray
) -> dict[str, Any]:
    if not cot.prompt_version.endswith("-nolabel"):
        return {
            "measured": False,
            "reason": "the prompt states the known outcome (label-conditioned): agreement is not a finding",
            "stated": None,
            "stated_share": None,
            "agreement": None,
        }
    # A truncated text lost its closing sentence: no verdict is read from it.
    verdicts = [None if cut else stated_verdict(t) for t, cut in zip(texts, truncated, strict=True)]
    stated = [(v, int(lab)) for v, lab in zip(verdicts, labels, strict=True) if v is not None]
    agree = sum(v == lab for v, lab in stated)
    return {
        "measured": True,
        "reason": None,
        "stated": len(stated),
        "stated_share": _share(len(stated), len(texts)),
        "agreement": _share(agree, len(stated)),
    }


def report_dir(settings: Settings, dataset: str, version: str) -> Any:
    """``<home>/<ds>/cot/_reports/<model_version>__<prompt_version>/``."""
    cot = CotVersion.parse(version)
    return layout.cot_root(DataPaths(settings.home, dataset)) / REPORTS_DIR / cot.folder


def write_report(settings: Settings, dataset: str, report: dict[str, Any]) -> Path:
    """Write ``quality.md`` then ``quality.json`` (each atomically); the JSON file's path."""
    folder = report_dir(settings, dataset, report["version"])
    md = (
        f"# CoT quality: {dataset} `{report['version']}`\n\n"
        f"{report['days']['count']} day(s), {report['days']['first']} .. {report['days']['last']}; "
        f"written {report['created_at']} by `python -m jobs.cot_report`.\n\n"
        f"{render_markdown(report)}\n"
    )
    fsio.write_text_atomic(folder / REPORT_MD, md)
    fsio.write_json_atomic(folder / REPORT_JSON, report)
    return folder / REPORT_JSON


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _dist(stats: dict[str, Any]) -> str:
    return " / ".join(_num(stats[k]) for k in ("mean", *(f"p{q}" for q in PERCENTILES)))


def render_markdown(report: dict[str, Any]) -> str:
    """A two-column metric/value table of the report (no heading), for results pages."""
    deg = report["degenerate"]
    agreement = report["label_agreement"]
    div = report["diversity"]
    if agreement["measured"] and not agreement["stated"]:
        agree = "n/a (no text states a verdict)"
    elif agreement["measured"]:
        agree = f"{_pct(agreement['agreement'])} of {agreement['stated']} stated verdicts"
        agree += f" ({_pct(agreement['stated_share'])} of texts)"
    else:
        agree = "n/a (label-conditioned prompt)"
    if div["days"]:
        within = (
            f"{_num(div['label_0']['mean_cosine'], 3)} / {_num(div['label_1']['mean_cosine'], 3)} "
            f"({div['embedder']}, n={div['label_0']['sampled']} / {div['label_1']['sampled']})"
        )
    else:
        within = f"n/a (no {div['embedder']} pool for this version)"
    rows = [
        ("CoT version", f"`{report['version']}`"),
        ("rows / texts / failed", f"{report['rows']} / {report['texts']} / {report['failed']}"),
        ("generated tokens mean / p10 / p50 / p90", _dist(report["tokens"])),
        ("words mean / p10 / p50 / p90", _dist(report["words"])),
        ("truncated (finish reason length)", _pct(report["truncated"]["share"])),
        (f"short (< {MIN_WORDS} words)", _pct(deg["short"]["share"])),
        (
            f"repetitive (> {REPEAT_MAX_SHARE:.0%} repeated word {REPEAT_NGRAM}-grams)",
            _pct(deg["repetitive"]["share"]),
        ),
        (
            f"prompt echo (>= {ECHO_MIN_SHARE:.0%} of word {ECHO_NGRAM}-grams in the prompt)",
            _pct(deg["echo"]["share"]),
        ),
        ("degenerate (any of the three)", _pct(deg["any"]["share"])),
        ("label agreement", agree),
        ("cot_vec mean cosine within label 0 / 1", within),
        ("cosine between label centroids", _num(div["centroid_cosine"], 3)),
    ]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)
