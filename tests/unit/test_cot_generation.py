"""The transformers generator (the Ray actor's body, run in-process), blocks and the committer."""

from __future__ import annotations

import pandas as pd
import pytest

from llmcf_core.config import DecodingConfig
from llmcf_core.cot.blocks import BlockStore, merge_rows, to_table
from llmcf_core.cot.engine_hf import (
    CANDIDATE_COLUMNS,
    TransformersGenerator,
    generate_candidates,
    pick_dtype,
)
from llmcf_core.cot.pipeline import BlockCommitter

DECODING = DecodingConfig(do_sample=True, num_candidates=2, max_new_tokens=6, min_new_tokens=2, seed=1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from llmcf_core.llm.models import resolve_model

    # One build per test session, shared by the CoT test modules.
    return str(resolve_model("tiny-llama", tmp_path_factory.getbasetemp() / "cot-models"))


@pytest.fixture(scope="module")
def generator(tiny_dir):
    return TransformersGenerator(
        tiny_dir, DECODING.model_dump(), dtype="float32", device="cpu", torch_threads=1
    )


def _prompts(gen: TransformersGenerator, words: list[int]) -> list[str]:
    msgs = [[{"role": "user", "content": "movie " * k}] for k in words]
    return [gen.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]


def test_dtype_choice():
    import torch

    assert pick_dtype("float32", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)


def test_generator_returns_n_candidates_per_prompt(generator):
    batch = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "block": [0, 0, 1], "prompt": _prompts(generator, [1, 6, 12])}
    )
    out = generator(batch)
    assert list(out.columns) == list(CANDIDATE_COLUMNS)
    assert out.groupby("sample_id")["candidate"].apply(list).to_dict() == {
        "a": [0, 1],
        "b": [0, 1],
        "c": [0, 1],
    }
    assert out["error"].isna().all()
    assert out["n_tokens"].between(2, 6).all()  # min_new_tokens .. max_new_tokens
    assert set(out["finish_reason"]) <= {"stop", "length"}
    assert (out.loc[out["finish_reason"] == "length", "n_tokens"] == 6).all()
    assert out.loc[out["sample_id"] == "c", "block"].tolist() == [1, 1]


def test_left_padding_makes_batched_equal_to_single(generator):
    """Greedy output of a short prompt is the same alone and next to a much longer one."""
    greedy = DECODING.model_copy(update={"do_sample": False, "max_new_tokens": 5, "min_new_tokens": 5})
    short, long = _prompts(generator, [1, 30])
    alone = generate_candidates(generator.model, generator.tokenizer, [short], greedy, seed=0)[0]
    batched = generate_candidates(generator.model, generator.tokenizer, [short, long], greedy, seed=0)[0]
    assert len(alone) == 1 and alone[0]["text"] == batched[0]["text"]


def test_a_failing_batch_is_retried_row_by_row(generator, monkeypatch):
    real = generator.model.generate

    def flaky(**kwargs):
        if kwargs["input_ids"].shape[0] > DECODING.num_candidates or kwargs["input_ids"].shape[1] > 60:
            raise RuntimeError("poisoned prompt")  # the whole batch, then the long prompt alone
        return real(**kwargs)

    monkeypatch.setattr(generator.model, "generate", flaky)
    batch = pd.DataFrame(
        {"sample_id": ["ok", "bad"], "block": [3, 3], "prompt": _prompts(generator, [1, 60])}
    )
    out = generator(batch)
    ok, bad = out[out["sample_id"] == "ok"], out[out["sample_id"] == "bad"]
    assert ok["error"].isna().all() and len(ok) == 2
    assert (bad["finish_reason"] == "error").all() and bad["error"].str.contains("poisoned prompt").all()
    assert bad["text"].isna().all() and len(bad) == 2


def _plan(ids: list[str], blocks: list[int], errors: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ids,
            "label": [1] * len(ids),
            "prompt": [None if e else "p" for e in errors],
            "prompt_error": errors,
            "target_terms": [["heat"]] * len(ids),
            "block": blocks,
        }
    )


def _cands(sid: str, block: int, text: str = "The user liked Heat, a crime film.") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "sample_id": sid,
                "block": block,
                "candidate": c,
                "text": text,
                "n_tokens": 7,
                "finish_reason": "stop",
                "error": None,
            }
            for c in range(2)
        ]
    )


def test_committer_commits_whole_blocks_only(tmp_path):
    store = BlockStore(tmp_path / "_blocks" / "m__v1-lc")
    plan = _plan(["s1", "s2", "s3", "s4"], [0, 0, 1, 2], [None, None, None, "prompt too long: 9 tokens"])
    committer = BlockCommitter(
        store,
        plan,
        n_candidates=2,
        model_version="m",
        prompt_version="v1-lc",
        label_conditioned=True,
        min_chars=5,
        forbidden=[],
    )
    committer.commit_ready()
    assert [p.name for p in store.files()] == ["block-00002.parquet"]  # only prompt errors: no model needed
    committer.add(pd.concat([_cands("s1", 0), _cands("s3", 1)]))
    assert [p.name for p in store.files()] == [
        "block-00001.parquet",
        "block-00002.parquet",
    ]  # block 0 waits for s2
    with pytest.raises(RuntimeError, match="incomplete blocks: \\[0\\]"):
        committer.finish()
    committer.add(_cands("s2", 0, text=""))  # both candidates empty -> a failed row
    committer.finish()
    rows = merge_rows(store.read()).set_index("sample_id")
    assert rows.loc["s1", "cot_text"] == "The user liked Heat, a crime film." and rows.loc["s1", "score"] > 0
    assert rows.loc["s2", "error"] == "candidate 0: empty generation; candidate 1: empty generation"
    assert (
        rows.loc["s4", "error"].startswith("prompt too long") and rows.loc["s4", "finish_reason"] == "error"
    )
    assert store.next_index() == 3
    assert not list(store.folder.glob(".*"))  # no temp files left behind
    with pytest.raises(FileExistsError):
        store.write(1, to_table(rows.reset_index()))


def test_merge_prefers_later_rows():
    base = _plan(["a", "b"], [0, 0], [None, None]).assign(
        cot_text=["old a", None],
        model_version="m",
        prompt_version="p",
        n_tokens=[3, 0],
        finish_reason=["stop", "error"],
        score=None,
        error=[None, "boom"],
    )
    retry = base.iloc[[1]].assign(cot_text="new b", error=None, finish_reason="stop", n_tokens=4)
    merged = merge_rows(to_table(base), to_table(retry)).set_index("sample_id")
    assert merged.loc["a", "cot_text"] == "old a" and merged.loc["b", "cot_text"] == "new b"


def test_group_blocks_joins_whole_small_blocks_up_to_the_call_size():
    from llmcf_core.cot.blocks import group_blocks

    sizes = {0: 3, 1: 2, 2: 5, 3: 1, 4: 9, 5: 2}  # blocks of a call over several small days
    plan = pd.DataFrame(
        {"sample_id": [f"s{b}-{i}" for b, n in sizes.items() for i in range(n)]}
        | {"block": [b for b, n in sizes.items() for _ in range(n)]}
    )
    frames = group_blocks(plan.sample(frac=1, random_state=0), 6)  # any row order in
    assert [sorted(set(f["block"])) for f in frames] == [[0, 1, 2], [3, 4], [5]]
    assert [len(f) for f in frames] == [10, 10, 2]  # >= 6 each but the last; no block split
    assert sorted(pd.concat(frames)["sample_id"]) == sorted(plan["sample_id"])
    assert group_blocks(plan.iloc[:0], 6) == []
