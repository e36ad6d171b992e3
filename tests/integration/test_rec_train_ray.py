"""Ray Train: the training job on 2 DDP workers (gloo, CPU) over Ray Data shards, its epoch
checkpoints, and resuming the same run from its last checkpoint.

One test on purpose: each TorchTrainer start costs ~20 s on a 2-core machine. Its data root is an
object-store URL (``lobj://``, see ``llmcf_core.fsio``): Ray Train writes its checkpoints through
``storage_filesystem`` and the model version is uploaded with metrics.json last, as on S3/GCS.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from jobs import train_rec
from llmcf_core import fsio
from llmcf_core.config import load_config
from llmcf_core.rec import registry
from llmcf_core.rec.dataset import load_tables
from llmcf_core.rec.synthetic import write_synthetic_dataset
from llmcf_core.rec.train import RunSpec, _fit_ray

EMBEDDER = "synth-enc"


@pytest.fixture
def local_ray():
    yield
    import ray

    ray.shutdown()  # the job started an in-process Ray instance; stop it with the test


@pytest.fixture
def object_store_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCF_HOME", f"lobj://{tmp_path / 'bucket' / 'llmcf'}")
    monkeypatch.setenv("LLMCF_CACHE", str(tmp_path / "cache"))
    load_config.cache_clear()
    yield fsio.as_path(f"lobj://{tmp_path / 'bucket' / 'llmcf'}")
    load_config.cache_clear()


@pytest.mark.slow
def test_two_workers_checkpoint_and_resume(object_store_home, local_ray, capsys):
    llmcf_home = object_store_home
    write_synthetic_dataset(llmcf_home, "synth", n_users=16, n_items=20, days=(3, 1, 1))
    argv = ["--dataset", "synth", "--model", "DIN", "--variant", "llmcf", "--embedder", EMBEDDER]
    assert train_rec.main([*argv, "--workers", "2", "--max-epochs", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))
    assert result["trained"] and result["epochs"] == 1 and result["path"].startswith("lobj://")

    folder = registry.version_dir(llmcf_home, "DIN", "llmcf", result["version"])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["workers"] == 2 and 0 <= metrics["valid"]["auc"] <= 1
    assert metrics["test"]["n"] == metrics["data"]["rows"]["test"]  # both ranks' shares gathered
    run_dir = registry.runs_dir(llmcf_home, "DIN", "llmcf") / result["version"]
    assert any(p.name.startswith("checkpoint_") for p in run_dir.iterdir())

    # The same run started again with more epochs resumes from its checkpoint (Ray Train restores
    # a run by name + storage path) instead of starting over.
    settings = load_config("local")
    rec = settings.rec
    tables = load_tables(settings, "synth", embedder=EMBEDDER)
    run = RunSpec(
        "DIN",
        "llmcf",
        0,
        rec.model_for("DIN"),
        rec.batch_size,
        rec.eval_batch_size,
        1,
        rec.patience,
    )
    state = _fit_ray(tables, dataclasses.replace(run, max_epochs=2), run_dir, 2, rec, None)
    assert state["resumed_from"] == 1 and state["epoch"] == 2
    assert state["final"]["history"][0] == metrics["history"][0]  # epoch 1 came from the checkpoint
