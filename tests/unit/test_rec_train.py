"""Training without Ray (workers=0): model folders, version reuse, resume, warm start, the job's
CLI contract, and the publish gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import train_rec
from llmcf_core.config import RecModelConfig, load_config
from llmcf_core.rec import registry
from llmcf_core.rec.dataset import load_tables
from llmcf_core.rec.modelio import load_version
from llmcf_core.rec.synthetic import write_synthetic_dataset
from llmcf_core.rec.train import LocalIO, RunSpec, fit

EMBEDDER = "synth-enc"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


@pytest.fixture
def rec_settings(llmcf_home):
    write_synthetic_dataset(llmcf_home, "synth", n_users=12, n_items=15, days=(3, 1, 1))
    settings = load_config("local")
    model = settings.rec.model.model_copy(update={"mlp_dims": (16, 8)})
    rec = settings.rec.model_copy(update={"embedder": EMBEDDER, "model": model, "batch_size": 32})
    return settings.model_copy(update={"rec": rec})


def _run(max_epochs: int, patience: int = 5) -> RunSpec:
    hp = RecModelConfig(mlp_dims=(16, 8), lr=0.01, user_dropout=0.0)
    return RunSpec("DIN", "llmcf", 0, hp, 32, 256, max_epochs, patience)


def test_local_fit_checkpoints_and_resumes(rec_settings, tmp_path):
    tables = load_tables(rec_settings, "synth", embedder=EMBEDDER)
    rows = tables.rows("train")
    first = fit(LocalIO(tmp_path, rows, 32, 0), tables, _run(1), None)
    assert first["epoch"] == 1 and (tmp_path / "state.pt").is_file()
    resumed = fit(LocalIO(tmp_path, rows, 32, 0), tables, _run(3), None)
    assert resumed["epoch"] == 3 and resumed["resumed_from"] == 1
    assert [h["epoch"] for h in resumed["final"]["history"]] == [1, 2, 3]
    # the first epoch is not re-run: its record is the checkpoint's
    assert resumed["final"]["history"][0] == first["final"]["history"][0]
    again = fit(LocalIO(tmp_path, rows, 32, 0), tables, _run(3), None)  # finished: nothing to train
    assert again["epoch"] == 3 and again["final"]["history"] == resumed["final"]["history"]


def test_training_flushes_denormals(rec_settings, tmp_path):
    """Denormal floats (weights that weight decay drove below 1.2e-38) are flushed to zero while a
    model trains: x86 cores compute with them tens of times slower (an xDeepFM epoch went from 13 s
    to 150 s)."""
    torch.set_flush_denormal(False)  # an earlier test's training may have turned it on
    tiny = torch.tensor([1e-39])  # made while off: with the flush on, even this would be 0
    assert (tiny * 1.0).item() != 0.0
    tables = load_tables(rec_settings, "synth", embedder=EMBEDDER)
    fit(LocalIO(tmp_path, tables.rows("train"), 32, 0), tables, _run(1), None)
    assert (tiny * 1.0).item() == 0.0


def test_early_stopping_keeps_the_best_epoch(rec_settings, tmp_path):
    tables = load_tables(rec_settings, "synth", embedder=EMBEDDER)
    state = fit(LocalIO(tmp_path, tables.rows("train"), 32, 0), tables, _run(30, patience=2), None)
    history = state["final"]["history"]
    aucs = [h["valid"]["auc"] for h in history]
    assert state["final"]["stopped_early"] and len(history) < 30
    assert history[-1]["epoch"] - state["best_epoch"] == 2  # stopped after 2 epochs without gain
    assert state["final"]["valid"]["auc"] == max(aucs)


def test_job_writes_the_model_folder_and_reuses_it(rec_settings, capsys):
    argv = ["--dataset", "synth", "--model", "DIN", "--variant", "llmcf", "--workers", "0"]
    argv += ["--max-epochs", "2", "--embedder", EMBEDDER]
    assert train_rec.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))
    assert result["trained"] and result["primary_metric"] == "auc"
    folder = registry.version_dir(rec_settings.home, "DIN", "llmcf", result["version"])
    assert {p.name for p in folder.iterdir()} == {
        "model.pt",
        "model.json",
        "vocab.npz",
        "metrics.json",
        "test_predictions.npz",
    }
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["valid"]) >= {"auc", "logloss"} and set(metrics["test"]) >= {"auc", "logloss"}
    assert metrics["epochs"] == 2 and metrics["data"]["k"] == 4

    loaded = load_version(folder)
    tables = load_tables(rec_settings, "synth", embedder=EMBEDDER)
    batch = tables.batch(tables.rows("valid"))
    with torch.no_grad():
        probs = loaded.model.predict(batch).numpy()
    from llmcf_core.rec.metrics import auc

    assert auc(tables.label[tables.rows("valid")], probs) == pytest.approx(metrics["valid"]["auc"])

    assert train_rec.main(argv) == 0  # same inputs and settings: the same version, reused
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))
    assert again["version"] == result["version"] and not again["trained"]


def test_job_rejects_bad_arguments(rec_settings):
    base = ["--dataset", "synth", "--workers", "0", "--embedder", EMBEDDER]
    assert train_rec.main([*base, "--model", "NoSuchNet"]) == 2
    assert train_rec.main([*base, "--model", "DIN", "--variant", "weird"]) == 2
    assert train_rec.main([*base, "--model", "DIN", "--until", "1998-13-01"]) == 2
    assert train_rec.main([*base, "--model", "DIN", "--until", "1990-01-01"]) == 2  # no samples yet


def test_warm_start_copies_rows_by_raw_id(rec_settings):
    from llmcf_core.rec.train import train

    first = train(rec_settings, "synth", "SASRec", "llmcf", workers=0, max_epochs=1)
    registry.set_pointer(rec_settings.home, "synth", "SASRec", "llmcf", first.version)
    warm = train(rec_settings, "synth", "SASRec", "llmcf", workers=0, max_epochs=1, warm_start=True, seed=1)
    info = warm.metrics["warm_start"]
    assert info["from"] == first.version and info["item_rows"] == 15 and info["tensors"] > 10
    assert warm.metrics["primary_metric"] == "ndcg@10" and "hit@10" in warm.metrics["test"]


def _fake_version(
    home, version: str, auc: float, metric: str = "auc", floor: float | None = 0.65, cot: str | None = None
) -> None:
    folder = registry.version_dir(home, "DIN", "llmcf", version)
    folder.mkdir(parents=True)
    metrics = {"primary_metric": metric, "valid": {metric: auc}, "cot_version": cot}
    if floor is not None:
        metrics["baseline_floor"] = {"name": "item_plus_history", "metric": metric, "valid": floor}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_publish_gate(tmp_path):
    home = tmp_path
    _fake_version(home, "v1", 0.70)
    _fake_version(home, "v2", 0.699)  # within tolerance
    _fake_version(home, "v3", 0.66)  # much worse than v2, above the floor
    _fake_version(home, "v4", float("nan"))
    _fake_version(home, "v0", 0.64)  # below its counting baseline (0.65)
    _fake_version(home, "v00", 0.90, floor=None)  # no baseline recorded

    # The floor holds for a first publication too: nothing is published yet.
    d0 = registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v0", tolerance=1.0)
    assert not d0.published and "does not beat the counting baseline item_plus_history" in d0.reason
    assert d0.baseline_value == pytest.approx(0.65)
    assert not registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v00", tolerance=1.0).published
    assert registry.current_version(home, "ml-100k", "DIN", "llmcf") is None

    d1 = registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v1", tolerance=0.002)
    assert d1.published and d1.previous_version is None
    assert registry.current_version(home, "ml-100k", "DIN", "llmcf") == "v1"
    d2 = registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v2", tolerance=0.002)
    assert d2.published and d2.previous_value == pytest.approx(0.70)
    d3 = registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v3", tolerance=0.002)
    assert not d3.published and "<" in d3.reason
    assert registry.current_version(home, "ml-100k", "DIN", "llmcf") == "v2"  # unchanged
    assert not registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v4", tolerance=1.0).published
    assert registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v2", tolerance=0.0).published  # idempotent
    # pointers are per dataset
    assert registry.current_version(home, "ml-1m", "DIN", "llmcf") is None
    pointer = registry.pointer_path(home, "ml-100k", "DIN", "llmcf")
    assert json.loads(pointer.read_text())["version"] == "v2"
    assert not [p for p in pointer.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(Exception, match="not complete"):
        registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "v9", tolerance=0.0)


def test_publish_gate_serves_only_the_promoted_cot_version(tmp_path):
    """A model trained on another CoT version than the promoted one (a run with another cot_model)
    is never published; before any promotion there is nothing to protect."""
    from llmcf_core.layout import DataPaths, write_current

    home = tmp_path
    _fake_version(home, "on-b", 0.80, cot="m-b__v1-lc")
    _fake_version(home, "on-a", 0.70, cot="m-a__v1-lc")
    write_current(DataPaths(home, "ml-100k"), "m-a", "v1-lc")
    refused = registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "on-b", tolerance=1.0)
    assert (
        not refused.published
        and "trained on CoT version m-b__v1-lc, not the promoted m-a__v1-lc" in refused.reason
    )
    assert registry.current_version(home, "ml-100k", "DIN", "llmcf") is None
    assert registry.publish_gate(home, "ml-100k", "DIN", "llmcf", "on-a", tolerance=1.0).published
    # before any promotion (another dataset here) the version is not checked
    assert registry.publish_gate(home, "ml-1m", "DIN", "llmcf", "on-b", tolerance=1.0).published


def test_saved_hparams_keep_their_keys_and_old_files_load():
    from llmcf_core.rec.modelio import stored_model_config

    stored = RecModelConfig(mlp_dims=(16, 8)).model_dump(mode="json")  # model.json and the version hash
    assert stored["mlp_dims"] == [16, 8] and sorted(stored) == sorted(
        ["embedding_dim", "mlp_dims", "seq_hidden", "ict_width_ranking", "ict_width_sequential"]
        + ["ict_layers", "ict_heads", "alpha_ranking", "alpha_sequential", "seq_fusion_weight"]
        + ["n_negatives", "lr", "weight_decay", "user_dropout", "seq_loss", "ict_dropout"]
    )
    assert stored_model_config(stored, "m/model.json") == RecModelConfig(mlp_dims=(16, 8))
    # written before user_dropout, seq_loss and ict_dropout existed: what those models trained with;
    # unknown keys ignored
    first = {k: v for k, v in stored.items() if k not in ("user_dropout", "seq_loss", "ict_dropout")}
    hp = stored_model_config({**first, "retired": 1}, "m/model.json")
    assert (hp.mlp_dims, hp.user_dropout, hp.seq_loss, hp.ict_dropout) == ((16, 8), 0.0, "sampled", 0.0)
    with pytest.raises(ValueError, match="m/model.json: hparams lack embedding_dim"):
        stored_model_config({k: v for k, v in stored.items() if k != "embedding_dim"}, "m/model.json")


def test_vocab_roundtrip_and_unknown_ids(rec_settings):
    from llmcf_core.rec.train import train

    result = train(rec_settings, "synth", "DeepFM", "base", workers=0, max_epochs=1)
    loaded = load_version(result.path)
    assert loaded.user_index(np.array([1, 999])).tolist() == [1, 0]  # unknown user -> 0
    assert loaded.item_index(np.array([15, 16])).tolist() == [15, 0]
    assert loaded.meta["hparams"]["lr"] == pytest.approx(rec_settings.rec.model.lr)
    seq = train(rec_settings, "synth", "SASRec", "base", workers=0, max_epochs=1)
    assert load_version(seq.path).meta["hparams"]["lr"] == pytest.approx(1e-3)  # SASRec's own (lr_overrides)


def test_per_backbone_epoch_caps(rec_settings):
    """``rec.max_epochs_overrides`` caps one backbone's epochs; the others keep ``rec.max_epochs``,
    and ``max_epochs=`` (the jobs' --max-epochs) still wins for all."""
    from llmcf_core.rec.train import train

    rec = rec_settings.rec.model_copy(
        update={"max_epochs": 1, "max_epochs_overrides": {"GRU4Rec": 2}, "patience_overrides": {"GRU4Rec": 5}}
    )
    settings = rec_settings.model_copy(update={"rec": rec})
    assert train(settings, "synth", "GRU4Rec", "base", workers=0).metrics["epochs"] == 2
    assert train(settings, "synth", "DIN", "base", workers=0).metrics["epochs"] == 1
    assert train(settings, "synth", "GRU4Rec", "base", workers=0, max_epochs=1).metrics["epochs"] == 1


def test_train_job_result_names_the_version_the_publish_gate_takes(rec_settings, capsys):
    """The DAG's evaluate task gates the version the train job reports in its LLMCF_RESULT line."""
    from llmcf_core.rec.synthetic import FIRST_DAY

    day = FIRST_DAY.replace(day=FIRST_DAY.day + 4)
    args = ["--dataset", "synth", "--model", "DCN", "--variant", "llmcf_wocot", "--workers", "0"]
    args += ["--max-epochs", "1", "--partition", day.isoformat(), "--embedder", EMBEDDER]
    assert train_rec.main(args) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("LLMCF_RESULT ")][-1]
    result = json.loads(line.removeprefix("LLMCF_RESULT "))
    assert (result["dataset"], result["model"], result["variant"]) == ("synth", "DCN", "llmcf_wocot")
    assert registry.is_complete(
        registry.version_dir(rec_settings.home, "DCN", "llmcf_wocot", result["version"])
    )
    decision = registry.publish_gate(
        rec_settings.home, "synth", "DCN", "llmcf_wocot", result["version"], tolerance=0.002
    )
    # The gate judged exactly that version (published or not: one epoch of the job's config).
    assert decision.version == result["version"] and decision.reason


def test_checkpoint_directory_gives_each_reader_its_own_copy(tmp_path):
    """A remote checkpoint is downloaded per reader (Ray's shared temp folder tore a file on resume);
    a local one is read in place."""
    import pyarrow.fs
    from fsspec.implementations.memory import MemoryFileSystem
    from ray.train import Checkpoint

    from llmcf_core.raycompute import checkpoint_directory

    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "state.pt").write_bytes(b"x" * 1000)
    with checkpoint_directory(Checkpoint.from_directory(str(local))) as folder:
        assert folder == str(local)

    mem = MemoryFileSystem()
    mem.pipe("/bucket/ckpt/state.pt", b"y" * 1000)
    remote = Checkpoint("/bucket/ckpt", filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(mem)))
    with checkpoint_directory(remote) as first, checkpoint_directory(remote) as second:
        assert first != second  # a second reader never downloads over the first one's files
        for folder in (first, second):
            assert (Path(folder) / "state.pt").read_bytes() == b"y" * 1000
    assert not Path(first).exists() and not Path(second).exists()


def test_ict_dropout_off_keeps_the_version_and_on_changes_it():
    """``ict_dropout`` 0 (the default) is left out of the hashed settings, so every version made
    before the setting existed stays valid; any other value is a new version of an ICT variant, and
    none of a base."""
    from llmcf_core.rec.train import version_id

    off = _run(3)
    on = RunSpec("DIN", "llmcf", 0, off.hp.model_copy(update={"ict_dropout": 0.3}), 32, 256, 3, 5)
    assert "ict_dropout" not in off.settings_dict()["hp"]
    assert on.settings_dict()["hp"]["ict_dropout"] == 0.3
    assert version_id("d", None, 0, "f", off, {}) != version_id("d", None, 0, "f", on, {})
    # a base has no ICT: the setting does not change it, nor its version
    base_off = RunSpec("DIN", "base", 0, off.hp, 32, 256, 3, 5)
    base_on = RunSpec("DIN", "base", 0, on.hp, 32, 256, 3, 5)
    assert version_id("d", None, 0, "f", base_off, {}) == version_id("d", None, 0, "f", base_on, {})


def test_runs_that_read_item_text_have_their_own_versions_since_the_fused_text_mean():
    """The fused history text mean sums in another order: the runs that read item text (ranking
    variants but base_notext; sequential ICT variants) are marked, the others keep their versions."""
    from llmcf_core.rec.train import _text_marker

    marked = {"text_mean": "fused"}
    assert _text_marker("ranking", "base") == _text_marker("ranking", "llmcf") == marked
    assert _text_marker("ranking", "llmcf_k0") == marked
    assert _text_marker("ranking", "base_notext") == {}
    assert _text_marker("sequential", "base") == _text_marker("sequential", "base_notext") == {}
    assert _text_marker("sequential", "llmcf_shufcot") == marked
