"""RecGen fine-tuning for real: tiny-llama on 2 Ray Train workers with DeepSpeed (CPU, gloo).

- ZeRO-3: a worker dies right after the step-3 checkpoint; rerunning the same version resumes at
  step 3 and ends at step 6; the exported HF folder reloads and generates.
- ZeRO-2: the same run uninterrupted; its losses fall and equal the resumed run's step by step.
- evaluation + publish: the balance table is written; a lenient gate publishes and moves `latest`;
  a strict gate refuses and `latest` stays.

The data root is an object-store URL (``lobj://``, a local folder with object-store semantics,
see ``llmcf_core.fsio``): instruction data, Ray Train checkpoints (``storage_filesystem``), the
scan for unregistered checkpoints, the exported candidate, the evaluation and the registry all go
through fsspec as they would on S3/GCS. ``tests/integration/test_recgen_dag.py`` runs the same
chain on a local data root.

The first run on a machine JIT-compiles DeepSpeed's CPU comm op (~70 s) into
``.cache/torch_extensions`` (git-ignored); later runs reuse it.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from llmcf_core import fsio
from llmcf_core.llm import instructions, registry

pytestmark = pytest.mark.slow

WINDOW_END = dt.date(1998, 1, 16)
DAYS = ("1998-01-15", "1998-01-16", "1998-03-10")  # two train days, one valid day (held out)
STEPS = 6


@pytest.fixture(scope="module")
def recgen(tmp_path_factory):
    """A data root with samples and tiny instruction data; the first fine-tune starts a local Ray
    instance in this process (with its dashboard, see ``raycompute.ensure_ray``)."""
    import ray

    from jobs import ingest
    from llmcf_core.config import load_config

    base = tmp_path_factory.mktemp("recgen")
    patch = pytest.MonkeyPatch()
    patch.setenv("LLMCF_HOME", f"lobj://{base / 'bucket' / 'llmcf'}")
    patch.setenv("LLMCF_CACHE", str(base / "cache"))  # local copies of models live here
    patch.delenv("RAY_ADDRESS", raising=False)  # not the session head's dashboard URL: a local instance
    load_config.cache_clear()
    try:
        for day in DAYS:
            assert ingest.main(["--dataset", "ml-100k", "--partition", day]) == 0
        settings = load_config("local")
        spec = instructions.InstructionSpec.from_settings(
            settings,
            "ml-100k",
            WINDOW_END,
            window_days=2,
            base_model="tiny-llama",
            max_length=256,
            rec_max_examples=48,
            general_max_examples=16,
        )
        instructions.build_instructions(settings, spec)
        yield settings, instructions.locate(settings, spec)
    finally:
        ray.shutdown()
        patch.undo()
        load_config.cache_clear()


def _spec(settings, folder, version, stage, **kw):
    from llmcf_core.llm.sft import FinetuneSpec

    return FinetuneSpec.from_settings(
        settings,
        dataset="ml-100k",
        window_end=WINDOW_END,
        instructions_dir=folder,
        version=version,
        base_model="tiny-llama",
        num_workers=2,
        cpus_per_worker=1,
        zero_stage=stage,
        max_steps=STEPS,
        micro_batch_size=2,
        grad_accum=1,
        lr=1e-3,
        checkpoint_every=3,
        log_every=3,
        **kw,
    )


def _losses(settings, version):
    meta = registry.read_metadata(registry.candidate_dir(settings.home, version))
    return [loss for _, loss, _ in meta["losses"]], meta


def test_zero3_run_killed_after_a_checkpoint_resumes_and_exports(recgen):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmcf_core.llm.sft import finetune

    settings, folder = recgen
    with pytest.raises(Exception, match="(?i)worker|actor|training failed"):
        finetune(settings, _spec(settings, folder, "z3", 3, fail_after_step=3))
    assert not registry.is_model_dir(registry.candidate_dir(settings.home, "z3"))

    out = finetune(settings, _spec(settings, folder, "z3", 3))  # same version = same run: resume
    assert (out["resumed_from_step"], out["final_step"], out["reused"]) == (3, STEPS, False)
    losses, meta = _losses(settings, "z3")
    assert len(losses) == STEPS and losses[-1] < losses[0]
    assert meta["train"]["zero_stage"] == 3 and meta["instructions"]["mix"] == "concat"
    assert meta["instructions"]["window"] == ["1998-01-15", "1998-01-16"]

    candidate = registry.candidate_dir(settings.home, "z3")
    assert fsio.is_url(candidate) and candidate.fs.isfile(f"{candidate.path}/model.safetensors")
    candidate = fsio.local_copy(candidate, marker=registry.METADATA_FILE)  # what the evaluator loads
    model = AutoModelForCausalLM.from_pretrained(candidate)
    tok = AutoTokenizer.from_pretrained(candidate)
    ids = tok("Hello", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4

    again = finetune(settings, _spec(settings, folder, "z3", 3))  # a finished run is reused
    assert again["reused"] is True


def test_zero2_run_loss_falls_and_matches_the_resumed_run(recgen):
    from llmcf_core.llm.sft import finetune

    settings, folder = recgen
    out = finetune(settings, _spec(settings, folder, "z2", 2))
    assert (out["resumed_from_step"], out["final_step"]) == (0, STEPS)
    losses, meta = _losses(settings, "z2")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert meta["segments"][-1]["tokens_per_s"] > 0 and meta["segments"][-1]["peak_memory_mb_per_worker"] > 0
    resumed, _ = _losses(settings, "z3")
    assert losses == pytest.approx(resumed, rel=1e-3)  # the resumed run saw exactly the same batches


def test_evaluation_writes_the_balance_table_and_the_gate_decides(recgen):
    from llmcf_core.llm.evaluate import evaluate_candidate

    settings, _ = recgen

    def with_gate(min_gain, factor):
        rc = settings.recgen.model_copy(
            update={
                "gate_min_auc_gain": min_gain,
                "gate_max_ppl_factor": factor,
                "eval_rec_max": 48,
                "eval_general_max": 8,
            }
        )
        return settings.model_copy(update={"recgen": rc})

    strict = evaluate_candidate(with_gate(1.0, 1.0), dataset="ml-100k", window_end=WINDOW_END, version="z3")
    assert strict["gate"]["passed"] is False
    with pytest.raises(registry.GateRefused):
        registry.publish(settings.home, "z3")
    assert registry.latest_version(settings.home) is None

    lenient = evaluate_candidate(
        with_gate(-1.0, 1e9),
        dataset="ml-100k",
        window_end=WINDOW_END,
        version="z2",
        compare={"rec-only (stand-in)": "z3"},
    )
    assert lenient["gate"]["passed"] is True
    metrics = lenient["metrics"]
    assert list(metrics) == ["base (tiny-llama)", "rec-only (stand-in)", "RecGen (z2)"]
    for m in metrics.values():
        assert 0 <= m["rec_auc"] <= 1 and m["rec_logloss"] > 0 and m["general_ppl"] > 1 and m["rec_n"] == 48
    eval_dir = registry.candidate_dir(settings.home, "z2") / "eval"
    assert "| RecGen (z2) |" in (eval_dir / "balance.md").read_text()
    assert json.loads((eval_dir / "metrics.json").read_text())["eval_set"]["rec_days"] == ["1998-03-10"]

    registry.publish(settings.home, "z2")
    assert registry.latest_version(settings.home) == "z2"
    assert (registry.version_dir(settings.home, "z2") / "eval" / "gate.json").is_file()
    # On an object store publishing copies the candidate (metadata.json last) and removes it.
    assert not registry.candidate_dir(settings.home, "z2").exists()

    from llmcf_core.cot.versions import resolve_cot_model

    ref = resolve_cot_model("recgen:latest", settings.home)  # the CoT stage loads a local copy
    assert ref.model_version == "recgen-z2" and (ref.path / "config.json").is_file()
    assert not fsio.is_url(ref.path) and str(fsio.cache_root()) in str(ref.path)
