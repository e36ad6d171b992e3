"""RecGen instruction data: rec Yes/No instructions + general conversations, tokenized, checked, published.

Layout (one published folder per version inside the window-end partition, like CoT versions)::

    <home>/<dataset>/recgen_instructions/dt=<window end>/<version>/   part-00000.parquet + _SUCCESS

Rec rows come from the ``train`` split of the published samples partitions in the window and the
items table; general rows from English single-turn ShareGPT conversations that fit ``max_length``
(held-out conversations excluded). ``mix`` says how they are combined:

- ``concat``   all rec rows + the general rows (the paper: plain concatenation);
- ``rec-only`` the rec rows alone (the ablation);
- ``half-rec`` half the rec rows (by a hash of sample_id) + the same general rows.

The version name encodes the mix, the max length and a hash of everything else that changes the
bytes (window, caps, tokenizer), so the fine-tuning job finds the data by recomputing it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmcf_core import storage
from llmcf_core.config import Settings
from llmcf_core.layout import INSTRUCTIONS, DataPaths, InvalidArgument
from llmcf_core.quality import CheckReport, Rule, run_rules
from llmcf_core.quality.publish import publish_checked, reject

log = logging.getLogger(__name__)

ARTIFACT = INSTRUCTIONS
BUILDER_VERSION = "1"  # bump when the wording or encoding changes
COLUMNS = (
    "instruction_id",
    "source",
    "sample_id",
    "label",
    "timestamp",
    "sample_split",
    "prompt",
    "response",
    "input_ids",
    "response_start",
    "n_tokens",
)
MIXES = ("concat", "rec-only", "half-rec")


@dataclass(frozen=True)
class InstructionSpec:
    """Everything that decides an instruction artifact's content."""

    dataset: str
    window_end: dt.date
    window_days: int
    mix: str
    base_model: str
    max_length: int
    prompt_history_items: int
    rec_max_examples: int
    general_max_examples: int
    general_ratio: float | None
    general_heldout_every: int
    general_min_ascii: float
    seed: int

    @classmethod
    def from_settings(
        cls, settings: Settings, dataset: str, window_end: dt.date, **overrides: Any
    ) -> InstructionSpec:
        rc = settings.recgen
        values = {
            "dataset": dataset,
            "window_end": window_end,
            "window_days": rc.window_days,
            "mix": rc.mix,
            "base_model": rc.base_model,
            "max_length": rc.max_length,
            "prompt_history_items": rc.prompt_history_items,
            "rec_max_examples": rc.rec_max_examples,
            "general_max_examples": rc.general_max_examples,
            "general_ratio": rc.general_ratio,
            "general_heldout_every": rc.general_heldout_every,
            "general_min_ascii": rc.general_min_ascii,
            "seed": rc.seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        spec = cls(**values)
        if spec.mix not in MIXES:
            raise InvalidArgument(f"unknown mix {spec.mix!r}: use one of {', '.join(MIXES)}")
        if spec.max_length < 32:
            raise InvalidArgument(f"max length {spec.max_length} is too small (min 32)")
        return spec

    @property
    def window_start(self) -> dt.date | None:
        return self.window_end - dt.timedelta(days=self.window_days - 1) if self.window_days else None

    def version(self, tokenizer_tag: str) -> str:
        payload = {k: v for k, v in asdict(self).items() if k not in ("dataset", "window_end", "base_model")}
        payload.update(tokenizer=tokenizer_tag, builder=BUILDER_VERSION)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.mix}-L{self.max_length}-{digest}"


def tokenizer_tag(model_dir: Path) -> str:
    """A short hash of a model folder's tokenizer files (token ids depend on them, not on the weights)."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja"):
        f = Path(model_dir) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def artifact_dir(paths: DataPaths, window_end: dt.date, version: str) -> Path:
    return paths.partition(ARTIFACT, window_end) / version


def published_days(paths: DataPaths, start: dt.date | None, end: dt.date) -> list[dt.date]:
    """Published samples partitions with start <= day <= end, in order."""
    return [d for d in paths.sample_days(end) if start is None or d >= start]


def _hash_order(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def load_item_texts(paths: DataPaths) -> dict[int, str]:
    items = storage.read_partition(paths.items, columns=["item_id", "text"]).to_pydict()
    return dict(zip(items["item_id"], items["text"], strict=True))


def load_samples(paths: DataPaths, days: list[dt.date], splits: tuple[str, ...]) -> list[dict]:
    cols = ["sample_id", "item_id", "timestamp", "label", "history_item_ids", "split"]
    rows: list[dict] = []
    for day in days:
        table = storage.read_partition(paths.samples(day), columns=cols).to_pylist()
        rows += [r for r in table if r["split"] in splits]
    return rows


def rec_rows(
    tok: Any, samples: list[dict], item_text: dict[int, str], spec: InstructionSpec
) -> tuple[list[dict], int]:
    """Tokenized rec instructions (and how many samples could not fit max_length)."""
    from llmcf_core.llm.prompts import fit_rec_example, rec_response

    out, too_long = [], 0
    for s in samples:
        history = [item_text[i] for i in (s["history_item_ids"] or []) if i in item_text]
        history = history[-spec.prompt_history_items :] if spec.prompt_history_items else []
        response = rec_response(s["label"])
        fitted = fit_rec_example(tok, history, item_text.get(s["item_id"], ""), response, spec.max_length)
        if fitted is None:
            too_long += 1
            continue
        prompt, enc = fitted
        out.append(
            {
                "instruction_id": f"rec:{s['sample_id']}",
                "source": "rec",
                "sample_id": s["sample_id"],
                "label": int(s["label"]),
                "timestamp": int(s["timestamp"]),
                "sample_split": s["split"],
                "prompt": prompt,
                "response": response,
                "input_ids": enc.input_ids,
                "response_start": enc.response_start,
                "n_tokens": enc.n_tokens,
            }
        )
    return out, too_long


def general_rows(tok: Any, want: int, spec: InstructionSpec, *, heldout: bool = False) -> list[dict]:
    """Up to ``want`` general conversations that fit ``max_length``, tokenized, in file order."""
    from llmcf_core.llm import sharegpt
    from llmcf_core.llm.prompts import encode_chat

    out: list[dict] = []
    if want <= 0:
        return out
    for conv in sharegpt.iter_conversations(
        heldout=heldout, heldout_every=spec.general_heldout_every, min_ascii=spec.general_min_ascii
    ):
        # Cheap pre-filter: a token is at least one character in these tokenizers' worst case.
        if len(conv.prompt) + len(conv.response) > 8 * spec.max_length:
            continue
        enc = encode_chat(tok, conv.prompt, conv.response)
        if enc.n_tokens > spec.max_length or enc.response_start >= enc.n_tokens:
            continue
        out.append(
            {
                "instruction_id": f"general:{conv.conv_id}",
                "source": "general",
                "sample_id": None,
                "label": None,
                "timestamp": None,
                "sample_split": None,
                "prompt": conv.prompt,
                "response": conv.response,
                "input_ids": enc.input_ids,
                "response_start": enc.response_start,
                "n_tokens": enc.n_tokens,
            }
        )
        if len(out) >= want:
            break
    return out


def to_arrow(rows: list[dict]):
    import pyarrow as pa

    schema = pa.schema(
        [
            ("instruction_id", pa.string()),
            ("source", pa.string()),
            ("sample_id", pa.string()),
            ("label", pa.int8()),
            ("timestamp", pa.int64()),
            ("sample_split", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("input_ids", pa.list_(pa.int32())),
            ("response_start", pa.int32()),
            ("n_tokens", pa.int32()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


# ------------------------------------------------------------------------------------------------
# Data check (GX via llmcf_core.quality.run_rules)
# ------------------------------------------------------------------------------------------------


def _rule_true(name: str, col: str, requires: tuple[str, ...]) -> Rule:
    return Rule(
        name,
        "ExpectColumnValuesToBeInSet",
        {"column": col, "value_set": [True]},
        requires=requires,
        examples_from=("instruction_id",),
    )


def label_balance(df) -> dict[str, Any]:
    rec = df[df["source"] == "rec"]
    positives = int((rec["label"] == 1).sum())
    return {
        "rec": len(rec),
        "general": int((df["source"] == "general").sum()),
        "rec_positive": positives,
        "rec_negative": len(rec) - positives,
        "rec_positive_share": round(positives / len(rec), 4) if len(rec) else None,
    }


def check_instructions(
    df,
    *,
    dataset: str,
    partition: str,
    max_length: int,
    valid_start: dt.date | None,
    min_balance_rows: int = 20,
) -> CheckReport:
    """Suite ``recgen_instructions``.

    Rules: at least one row; columns present; ids unique; source rec/general, with rec rows present;
    token lengths within 1..max_length and equal to the stored ids; response tokens present
    (0 < response_start < n_tokens);
    rec rows: label 0/1 matching the "Yes"/"No" response, from the train split and before the
    validation period; both labels present (mean label within 0.01..0.99) once there are
    ``min_balance_rows`` rec rows.
    """
    import numpy as np

    from llmcf_core.layout import day_bounds

    frame = df.reset_index(drop=True)
    is_rec = (frame["source"] == "rec").to_numpy() if "source" in frame else np.zeros(len(frame), bool)
    derived: dict[str, Any] = {}
    if {"input_ids", "n_tokens"} <= set(frame.columns):
        derived["_chk_len_matches"] = np.array(
            [
                ids is not None and len(ids) == n
                for ids, n in zip(frame["input_ids"], frame["n_tokens"], strict=True)
            ]
        )
    if {"response_start", "n_tokens"} <= set(frame.columns):
        derived["_chk_has_response"] = (
            (frame["response_start"] > 0) & (frame["response_start"] < frame["n_tokens"])
        ).to_numpy()
    if {"label", "response"} <= set(frame.columns):
        want = np.where(frame["label"].fillna(-1).to_numpy() == 1, "Yes", "No")
        derived["_chk_rec_answer"] = ~is_rec | (
            frame["label"].isin([0, 1]).to_numpy() & (frame["response"].to_numpy() == want)
        )
    if "sample_split" in frame:
        derived["_chk_rec_train"] = ~is_rec | (frame["sample_split"].to_numpy() == "train")
    if "timestamp" in frame and valid_start is not None:
        limit = day_bounds(valid_start)[0]
        derived["_chk_rec_before_valid"] = ~is_rec | (frame["timestamp"].fillna(limit).to_numpy() < limit)
    rules = [
        Rule(
            "expect_table_row_count_to_be_between(min=1)",
            "ExpectTableRowCountToBeBetween",
            {"min_value": 1},
            detail="{observed} rows",
        ),
        *[Rule(f"expect_column_to_exist({c})", "ExpectColumnToExist", {"column": c}) for c in COLUMNS],
        Rule(
            "expect_column_values_to_be_unique(instruction_id)",
            "ExpectColumnValuesToBeUnique",
            {"column": "instruction_id"},
            requires=("instruction_id",),
            examples_from=("instruction_id",),
        ),
        Rule(
            "expect_column_values_to_be_in_set(source, rec/general)",
            "ExpectColumnValuesToBeInSet",
            {"column": "source", "value_set": ["rec", "general"]},
            requires=("source",),
            examples_from=("instruction_id",),
        ),
        Rule(
            f"expect_column_values_to_be_between(n_tokens, 1, {max_length})",
            "ExpectColumnValuesToBeBetween",
            {"column": "n_tokens", "min_value": 1, "max_value": max_length},
            requires=("n_tokens",),
            examples_from=("instruction_id", "n_tokens"),
        ),
        Rule(
            "expect_rec_rows_present",
            "ExpectColumnDistinctValuesToContainSet",
            {"column": "source", "value_set": ["rec"]},
            requires=("source",),
            detail="sources {observed}",
        ),
        _rule_true("expect_n_tokens_to_equal_len(input_ids)", "_chk_len_matches", ("input_ids", "n_tokens")),
        _rule_true("expect_response_tokens_present", "_chk_has_response", ("response_start", "n_tokens")),
        _rule_true("expect_rec_answer_yes_no_matching_label", "_chk_rec_answer", ("label", "response")),
        _rule_true("expect_rec_rows_from_train_split", "_chk_rec_train", ("sample_split",)),
    ]
    if "_chk_rec_before_valid" in derived:
        rules.append(
            _rule_true(
                f"expect_rec_rows_before_valid_start({valid_start})", "_chk_rec_before_valid", ("timestamp",)
            )
        )
    if int(is_rec.sum()) >= min_balance_rows and "label" in frame:
        derived["_chk_rec_label"] = np.where(is_rec, frame["label"].astype("float64").to_numpy(), np.nan)
        rules.append(
            Rule(
                "expect_rec_label_mean_between(0.01, 0.99)",
                "ExpectColumnMeanToBeBetween",
                {"column": "_chk_rec_label", "min_value": 0.01, "max_value": 0.99},
                requires=("label",),
                detail="positive share {observed}",
            )
        )
    return run_rules(frame, rules, derived=derived, suite=ARTIFACT, dataset=dataset, partition=partition)


# ------------------------------------------------------------------------------------------------
# Build -> check -> publish (or quarantine)
# ------------------------------------------------------------------------------------------------


@dataclass
class InstructionResult:
    dataset: str
    partition: str
    version: str
    path: Path
    rows: int
    changed: bool
    counts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def build_instructions(settings: Settings, spec: InstructionSpec) -> InstructionResult:
    """Build, check and publish the instruction data of ``spec``; quarantine and raise on a failed check."""
    import random

    from transformers import AutoTokenizer

    from llmcf_core.llm.models import resolve_model

    paths = DataPaths(settings.home, spec.dataset)
    cfg = settings.dataset(spec.dataset) if spec.dataset in settings.datasets else None
    valid_start = cfg.valid_start if cfg else None
    try:
        model_dir = resolve_model(spec.base_model, settings.home)
    except FileNotFoundError as exc:
        raise InvalidArgument(str(exc)) from None
    tok = AutoTokenizer.from_pretrained(model_dir)
    version = spec.version(tokenizer_tag(model_dir))
    partition = spec.window_end.isoformat()

    days = published_days(paths, spec.window_start, spec.window_end)
    if not days:
        raise InvalidArgument(
            f"no published samples partitions for {spec.dataset!r} in the window "
            f"{spec.window_start or 'start'} .. {spec.window_end}: run jobs.ingest first"
        )
    samples = load_samples(paths, days, ("train",))
    if spec.mix == "half-rec":
        samples = [s for s in samples if int(_hash_order(s["sample_id"], spec.seed)[:8], 16) % 2 == 0]
    samples.sort(key=lambda s: _hash_order(s["sample_id"], spec.seed))
    if spec.rec_max_examples:
        samples = samples[: spec.rec_max_examples]
    rec, too_long = rec_rows(tok, samples, load_item_texts(paths), spec)

    if spec.mix == "rec-only":
        want_general = 0
    elif spec.general_ratio is not None:
        n_rec_full = len(rec) * (2 if spec.mix == "half-rec" else 1)
        want_general = min(spec.general_max_examples, round(spec.general_ratio * n_rec_full))
    else:
        want_general = spec.general_max_examples
    general = general_rows(tok, want_general, spec)

    rows = rec + general
    random.Random(spec.seed).shuffle(rows)  # a stable mixed order; the trainer reshuffles per epoch
    table = to_arrow(rows)
    df = table.to_pandas()
    report = check_instructions(
        df, dataset=spec.dataset, partition=partition, max_length=spec.max_length, valid_start=valid_start
    )
    balance = label_balance(df) if len(df) else {}
    log.info("instructions %s: %s; %s", version, balance, report.summary().splitlines()[0])
    quarantine_dir = paths.quarantine(ARTIFACT, spec.window_end) / version
    if not report.success:
        reject(df, report, quarantine_dir, limit=settings.quality.quarantine_max_rows)

    counts = {**balance, "days": len(days), "rec_too_long": too_long, "general_wanted": want_general}
    folder = artifact_dir(paths, spec.window_end, version)
    published = publish_checked(
        table,
        folder,
        report,
        {
            "dataset": spec.dataset,
            "partition": partition,
            "version": version,
            "spec": {**asdict(spec), "window_end": partition},
            "window": [days[0].isoformat(), days[-1].isoformat()],
            "counts": counts,
            "label_balance": balance,
            "tokenizer": tokenizer_tag(model_dir),
        },
        clear=[quarantine_dir],
    )
    return InstructionResult(
        spec.dataset, partition, version, published.path, published.rows, published.changed, counts
    )


def locate(settings: Settings, spec: InstructionSpec) -> Path:
    """The published folder of ``spec``'s instruction data; InvalidArgument if it was not built."""
    from llmcf_core.llm.models import resolve_model

    paths = DataPaths(settings.home, spec.dataset)
    try:
        model_dir = resolve_model(spec.base_model, settings.home)
    except FileNotFoundError as exc:
        raise InvalidArgument(str(exc)) from None
    folder = artifact_dir(paths, spec.window_end, spec.version(tokenizer_tag(model_dir)))
    if not storage.is_published(folder):
        raise InvalidArgument(
            f"instruction data {folder} is not published: run jobs.build_instructions with the same arguments"
        )
    return folder


__all__ = [
    "ARTIFACT",
    "InstructionResult",
    "InstructionSpec",
    "artifact_dir",
    "build_instructions",
    "check_instructions",
    "locate",
    "tokenizer_tag",
]
