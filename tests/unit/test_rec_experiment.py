"""The experiment job on hand-built artifacts: runs every model x variant x seed (in-process),
writes the Markdown table, the PNG and the raw runs, and reuses finished runs."""

from __future__ import annotations

import json
import shutil

import pytest

from jobs import experiment
from llmcf_core.rec.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


def test_experiment_writes_table_plot_and_runs(llmcf_home, tmp_path, capsys):
    write_synthetic_dataset(llmcf_home, "synth", n_users=10, n_items=12, days=(2, 1, 1))
    out = tmp_path / "results"
    argv = ["--dataset", "synth", "--models", "DIN,SASRec", "--variants", "base,llmcf", "--seeds", "2"]
    argv += ["--workers", "0", "--max-epochs", "1", "--embedder", "synth-enc", "--out", str(out)]
    assert experiment.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))
    assert result["runs"] == 8 and result["cells"] == 4

    md = (out / "synth.md").read_text()
    assert "## Ranking (CTR)" in md and "## Next item (full ranking)" in md
    assert "| DIN | llmcf |" in md and "| SASRec | base |" in md and "lift auc" in md
    assert "± " in md and "%" in md and "python -m jobs.experiment --dataset synth" in md
    assert "![lift over base by model and variant](synth.png)" in md
    png = (out / "synth.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500
    # The counting baselines of both tasks, on the same split, are rows of their tables.
    for name in ("item_plus_history", "item_rate", "user_rate", "history_rate", "popularity"):
        assert f"| counting baseline | {name} |" in md
    for name in ("recent_popularity", "item_transitions"):
        assert f"| counting baseline | {name} |" in md
    assert "the best counting baseline" in md
    report = json.loads((out / "synth.json").read_text())
    assert set(report["baselines"]) == {"ranking", "sequential"}
    assert "item_transitions" in report["baselines"]["sequential"]["test"]
    # ...and, beside them, what the llmcf runs' retrieved examples know, counted (not a floor).
    retrieval = report["retrieval_baselines"]
    assert set(retrieval["ranking"]["test"]) == {"examples_vote", "item_history_examples"}
    assert set(retrieval["sequential"]["test"]) == {"example_targets"}
    assert "| retrieved examples, counted | examples_vote |" in md
    assert "| retrieved examples, counted | example_targets |" in md
    runs = report["runs"]
    assert {(r["model"], r["variant"], r["seed"]) for r in runs} == {
        (m, v, s) for m in ("DIN", "SASRec") for v in ("base", "llmcf") for s in (0, 1)
    }

    assert result["trained"] == 8 and result["reused"] == 0
    assert experiment.main(argv) == 0  # every run exists: reused, same versions
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))["reused"]
        == 8
    )
    again = json.loads((out / "synth.json").read_text())["runs"]
    assert [r["version"] for r in again] == [r["version"] for r in runs]
    one = ["--models", "DIN", "--variants", "base", "--seeds", "1"]
    assert experiment.main([*argv, *one, "--force"]) == 0  # --force retrains an existing version
    forced = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))
    assert forced["trained"] == 1 and forced["reused"] == 0 and forced["runs"] == 8


def test_experiment_rejects_unknown_names(llmcf_home):
    assert experiment.main(["--dataset", "synth", "--models", "Nope"]) == 2
    assert experiment.main(["--dataset", "synth", "--models", "DIN", "--variants", "base,odd"]) == 2
    assert experiment.main(["--dataset", "synth", "--seeds", "0"]) == 2


def test_paired_intervals_survive_a_new_machine(llmcf_home, tmp_path, capsys):
    """The table's archive of test predictions stands in for run folders that are not under this
    $LLMCF_HOME (a later session on a fresh machine adds runs to a committed table)."""
    write_synthetic_dataset(llmcf_home, "synth", n_users=10, n_items=12, days=(2, 1, 1))
    out = tmp_path / "results"
    argv = ["--dataset", "synth", "--variants", "base,llmcf", "--seeds", "2", "--workers", "0"]
    argv += ["--max-epochs", "1", "--embedder", "synth-enc", "--out", str(out)]
    assert experiment.main([*argv, "--models", "DIN,SASRec"]) == 0
    report = json.loads((out / "synth.json").read_text())
    before = {(c["model"], c["a"], c["b"]): c for c in report["comparisons"]}
    assert "all" in before[("SASRec", "llmcf", "base")]
    assert 1 <= len(list((out / "predictions").glob("rows-*.npz"))) <= 2  # one per set of test rows
    assert len(list((out / "predictions").glob("SASRec-*.npz"))) == 4

    for r in report["runs"]:  # the SASRec runs' folders are not on this machine
        if r["model"] == "SASRec":
            shutil.rmtree(llmcf_home / r["folder"])
    assert experiment.main([*argv, "--models", "DIN"]) == 0  # reuses DIN, keeps SASRec's rows
    after = {
        (c["model"], c["a"], c["b"]): c for c in json.loads((out / "synth.json").read_text())["comparisons"]
    }
    assert after[("SASRec", "llmcf", "base")]["all"] == before[("SASRec", "llmcf", "base")]["all"]
    assert after[("DIN", "llmcf", "base")]["all"] == before[("DIN", "llmcf", "base")]["all"]

    # Neither the folders nor the archive: the rows that an earlier call computed from these same
    # runs are carried over from the json (marked), with the cells' cold / warm metric.
    def sasrec_base_row() -> str:
        return next(
            line
            for line in (out / "synth.md").read_text().splitlines()
            if line.startswith("| SASRec | base |")
        )

    row_before = sasrec_base_row()
    shutil.rmtree(out / "predictions")
    assert experiment.main([*argv, "--models", "DIN"]) == 0
    table = json.loads((out / "synth.json").read_text())
    last = {(c["model"], c["a"], c["b"]): c for c in table["comparisons"]}
    carried = last[("SASRec", "llmcf", "base")]
    assert carried["carried"] and carried["all"] == before[("SASRec", "llmcf", "base")]["all"]
    assert "all" in last[("DIN", "llmcf", "base")] and "carried" not in last[("DIN", "llmcf", "base")]
    cells = {(c["model"], c["variant"]): c for c in table["cells"]}
    assert cells[("SASRec", "base")]["seeds"] == [0, 1]
    md = (out / "synth.md").read_text()
    assert sasrec_base_row() == row_before  # its cold / warm columns survive too
    assert "| SASRec | llmcf − base | 2* |" in md and "computed by an earlier call" in md

    # A run added beside them: its pair cannot join the carried row (no predictions of the others),
    # so the row with more seeds stays, and says how many it pairs.
    assert experiment.main([*argv, "--models", "SASRec", "--seeds", "1", "--first-seed", "2"]) == 0
    table = json.loads((out / "synth.json").read_text())
    row = next(c for c in table["comparisons"] if (c["model"], c["a"], c["b"]) == ("SASRec", "llmcf", "base"))
    assert row["carried"] and row["seeds"] == [0, 1] and row["all"] == carried["all"]
    assert len([r for r in table["runs"] if r["model"] == "SASRec"]) == 6
    assert "(2 seeds)" in sasrec_base_row()  # cold / warm over seeds 0-1 while the cell has three

    # A run the row was computed from is replaced (base seed 0 again with another lr: another
    # version), and the other runs' predictions are gone: nothing to carry, no interval.
    for r in table["runs"]:
        if r["model"] == "SASRec" and r["seed"] == 2:  # seeds 0-1: removed above
            shutil.rmtree(llmcf_home / r["folder"])
    shutil.rmtree(out / "predictions")
    other_lr = ["--variants", "base", "--set", "rec.lr_overrides.SASRec=0.002"]
    assert experiment.main([*argv, "--models", "SASRec", "--seeds", "1", *other_lr]) == 0
    table = json.loads((out / "synth.json").read_text())
    row = next(c for c in table["comparisons"] if (c["model"], c["a"], c["b"]) == ("SASRec", "llmcf", "base"))
    assert "missing" in row and "carried" not in row
    capsys.readouterr()


def test_an_arm_sits_beside_its_variant_and_is_compared_with_it(llmcf_home, tmp_path, capsys):
    """``--arm`` with ``--set``: the arm's runs are cells ``<variant>[<arm>]`` that neither replace
    nor are replaced by the plain variant's runs, and they are paired with base and with the
    plain variant."""
    write_synthetic_dataset(llmcf_home, "synth", n_users=10, n_items=12, days=(2, 1, 1))
    out = tmp_path / "results"
    argv = ["--dataset", "synth", "--models", "DIN", "--seeds", "1", "--workers", "0"]
    argv += ["--max-epochs", "1", "--embedder", "synth-enc", "--out", str(out)]
    assert experiment.main([*argv, "--variants", "base,llmcf"]) == 0
    arm = ["--variants", "llmcf", "--arm", "ictdrop0.5", "--set", "rec.model.ict_dropout=0.5"]
    assert experiment.main([*argv, *arm]) == 0
    assert experiment.main([*argv, "--variants", "llmcf"]) == 0  # the plain llmcf again: reused
    report = json.loads((out / "synth.json").read_text())
    runs = {(r["variant"], r.get("arm")): r for r in report["runs"]}
    assert set(runs) == {("base", None), ("llmcf", None), ("llmcf", "ictdrop0.5")}
    assert runs[("llmcf", "ictdrop0.5")]["version"] != runs[("llmcf", None)]["version"]  # its own model
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert {("llmcf[ictdrop0.5]", "base"), ("llmcf[ictdrop0.5]", "llmcf"), ("llmcf", "base")} <= pairs
    assert all("all" in c for c in report["comparisons"])  # every pair has its interval
    md = (out / "synth.md").read_text()
    assert "| DIN | llmcf[ictdrop0.5] |" in md and "llmcf[ictdrop0.5] − llmcf" in md
    assert experiment.main([*argv, "--variants", "llmcf", "--arm", "bad arm"]) == 2
    capsys.readouterr()


def test_two_calls_adding_runs_to_one_table_keep_both(llmcf_home, tmp_path, capsys, monkeypatch):
    """A call that trains while another call writes the same table reads the table after its own
    training, under the folder's lock: neither call's runs are lost (the last writer used to win)."""
    from llmcf_core.rec import experiment as core

    write_synthetic_dataset(llmcf_home, "synth", n_users=10, n_items=12, days=(2, 1, 1))
    out = tmp_path / "results"
    argv = ["--dataset", "synth", "--variants", "base", "--seeds", "1", "--workers", "0"]
    argv += ["--max-epochs", "1", "--embedder", "synth-enc", "--out", str(out)]
    real_train, other = core.train, []

    def train_while_another_call_lands(*args, **kwargs):
        result = real_train(*args, **kwargs)
        if not other:  # the other call finishes while this one is still training
            other.append(None)
            other.append(experiment.main([*argv, "--models", "DIN"]))
        return result

    monkeypatch.setattr(core, "train", train_while_another_call_lands)
    assert experiment.main([*argv, "--models", "SASRec"]) == 0 and other == [None, 0]
    runs = json.loads((out / "synth.json").read_text())["runs"]
    assert sorted(r["model"] for r in runs) == ["DIN", "SASRec"]
    capsys.readouterr()


def test_each_control_is_compared_with_base_and_with_llmcf():
    from llmcf_core.rec.experiment import CONTROLS, _pairs

    assert "llmcf_recon" in CONTROLS
    pairs = _pairs(["base", "base_notext", "llmcf", *CONTROLS])
    for control in CONTROLS:
        assert (control, "base") in pairs and ("llmcf", control) in pairs
    assert ("llmcf", "base_notext") in pairs


def test_the_table_names_the_data_fingerprint_of_each_kind_of_input():
    from llmcf_core.rec.experiment import _fingerprints

    def run(task, variant, fingerprint):
        return {"task": task, "variant": variant, "fingerprint": fingerprint * 64}

    assert _fingerprints([run("ranking", "base", "a"), run("ranking", "base_notext", "a")]) == (
        "data fingerprint `aaaaaaaaaaaa`"
    )
    text = _fingerprints(
        [
            run("ranking", "base", "a"),
            run("ranking", "llmcf_k0", "a"),
            run("ranking", "llmcf", "b"),
            run("sequential", "base", "c"),
        ]
    )
    assert text == (
        "data fingerprints ranking `aaaaaaaaaaaa`, ranking with examples `bbbbbbbbbbbb`, next item `cccccccccccc`"
    )


def _one_seed_table(llmcf_home, tmp_path):
    """A synthetic dataset and the arguments of a one-seed, one-epoch call writing to <tmp>/results."""
    write_synthetic_dataset(llmcf_home, "synth", n_users=10, n_items=12, days=(2, 1, 1))
    out = tmp_path / "results"
    argv = ["--dataset", "synth", "--seeds", "1", "--workers", "0", "--max-epochs", "1"]
    return out, [*argv, "--embedder", "synth-enc", "--out", str(out)]


def test_baselines_and_cot_report_of_runs_on_other_data_are_kept_not_recomputed(llmcf_home, tmp_path, capsys):
    """Runs made on another machine (another data fingerprint: item vectors differ in the last bits
    across CPU types) keep their table's counting and retrieval baselines and CoT report when a call
    here adds runs of another task; the task whose data is this home's gets its own."""
    out, argv = _one_seed_table(llmcf_home, tmp_path)
    assert experiment.main([*argv, "--models", "DIN", "--variants", "base,llmcf"]) == 0
    path = out / "synth.json"
    table = json.loads(path.read_text())
    computed = table["baselines"]["ranking"]["test"]["item_rate"]["auc"]
    for r in table["runs"]:  # as if the DIN runs had been made on another machine's data
        r["fingerprint"] = "f" * 64
    table["baselines"]["ranking"]["test"]["item_rate"]["auc"] = 0.4242
    table["retrieval_baselines"]["ranking"]["test"]["examples_vote"]["auc"] = 0.4343
    table["cot_quality"] = ["## CoT quality (the other machine's pool)", "", "kept", ""]
    path.write_text(json.dumps(table))

    assert experiment.main([*argv, "--models", "SASRec", "--variants", "base"]) == 0
    after = json.loads(path.read_text())
    assert {r["model"] for r in after["runs"]} == {"DIN", "SASRec"}
    assert after["baselines"]["ranking"]["test"]["item_rate"]["auc"] == 0.4242
    assert after["retrieval_baselines"]["ranking"]["test"]["examples_vote"]["auc"] == 0.4343
    assert "item_transitions" in after["baselines"]["sequential"]["test"]  # this home's task: computed
    md = (out / "synth.md").read_text()
    assert "## CoT quality (the other machine's pool)" in md and "| 0.4242 |" in md

    # DIN run again here (reused from its folder: this home's fingerprint): recomputed from this home.
    assert experiment.main([*argv, "--models", "DIN", "--variants", "base,llmcf"]) == 0
    again = json.loads(path.read_text())
    assert again["baselines"]["ranking"]["test"]["item_rate"]["auc"] == computed != 0.4242
    assert again["cot_quality"] != table["cot_quality"]


def test_a_home_without_a_pool_keeps_the_tables_retrieval_baselines(llmcf_home, tmp_path, capsys):
    """A call that adds runs without examples (``llmcf_k0``) on a machine that has the data but no
    in-context pool keeps the earlier table's runs with examples and what their examples know
    (retrieval baselines) instead of dropping them; its counting baselines are this home's."""
    out, argv = _one_seed_table(llmcf_home, tmp_path)
    assert experiment.main([*argv, "--models", "SASRec", "--variants", "base,llmcf"]) == 0
    path = out / "synth.json"
    table = json.loads(path.read_text())
    example_targets = table["retrieval_baselines"]["sequential"]["test"]["example_targets"]
    metric = next(iter(example_targets))
    example_targets[metric] = 0.4343  # a value only the earlier table has
    path.write_text(json.dumps(table))
    pools = list(llmcf_home.glob("synth/embeddings/*/pool"))
    assert pools
    for pool in pools:  # this home has no pool now
        shutil.rmtree(pool)

    assert experiment.main([*argv, "--models", "SASRec", "--variants", "llmcf_k0"]) == 0
    capsys.readouterr()
    after = json.loads(path.read_text())
    assert {r["variant"] for r in after["runs"]} == {"base", "llmcf", "llmcf_k0"}
    assert after["retrieval_baselines"]["sequential"]["test"]["example_targets"][metric] == 0.4343
    assert after["baselines"]["sequential"] == table["baselines"]["sequential"]  # the same data here
    assert "| retrieved examples, counted | example_targets |" in (out / "synth.md").read_text()


def test_render_rewrites_a_table_from_its_json_and_archive_alone(llmcf_home, tmp_path, capsys):
    """`--render` on a machine without the runs' data or models: the same rows, from the archived
    predictions; the baselines and CoT report as the json has them; nothing trained."""
    write_synthetic_dataset(llmcf_home, "synth", n_users=10, n_items=12, days=(2, 1, 1))
    out = tmp_path / "results"
    argv = ["--dataset", "synth", "--models", "DIN", "--variants", "base,llmcf", "--seeds", "2"]
    assert (
        experiment.main(
            [*argv, "--workers", "0", "--max-epochs", "1", "--embedder", "synth-enc", "--out", str(out)]
        )
        == 0
    )
    table = json.loads((out / "synth.json").read_text())
    table["baselines"]["ranking"]["test"]["popularity"]["auc"] = 0.4321  # a sentinel: kept, not recomputed
    table["cot_quality"] = ["## CoT quality (sentinel)", ""]
    (out / "synth.json").write_text(json.dumps(table))
    for child in llmcf_home.iterdir():  # no data, no models: only the table and its archive
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    capsys.readouterr()

    assert experiment.main(["--dataset", "synth", "--render", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("LLMCF_RESULT "))
    assert result["trained"] == 0 and result["runs"] == 4
    again = json.loads((out / "synth.json").read_text())
    assert (
        again["runs"] == table["runs"]
        and again["baselines"]["ranking"]["test"]["popularity"]["auc"] == 0.4321
    )
    row = next(c for c in again["comparisons"] if (c["a"], c["b"]) == ("llmcf", "base"))
    old = next(c for c in table["comparisons"] if (c["a"], c["b"]) == ("llmcf", "base"))
    assert "carried" not in row and row["all"]["diff"] == pytest.approx(old["all"]["diff"], abs=1e-6)
    assert "seed_lo" in row["all"]
    md = (out / "synth.md").read_text()
    assert "| over seeds |" in md and "0.4321" in md and "CoT quality (sentinel)" in md
    assert "--render" in md.splitlines()[2]
    assert experiment.main(["--dataset", "synth", "--render", "--out", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    # options of a training call are refused, not silently ignored: the table stays as it is
    before = (out / "synth.json").read_text()
    assert (
        experiment.main(
            ["--dataset", "synth", "--render", "--out", str(out), "--models", "DIN", "--seeds", "3"]
        )
        == 2
    )
    err = capsys.readouterr()
    assert "--render" in err.err + err.out and "--models, --seeds" in err.err + err.out
    assert (out / "synth.json").read_text() == before


def test_runs_of_two_pools_show_each_pools_cot_report(llmcf_home, tmp_path, capsys, monkeypatch):
    """Next-item runs with examples added here to a table whose ranking runs read another machine's
    pool: the table keeps that pool's CoT report and adds this home's, each headed by the kinds of
    input that read it and its fingerprint; rendering again keeps both."""
    from llmcf_core.rec import experiment as rec_experiment

    asked = []

    def this_homes_report(settings, dataset, version, embedder=None):  # the synthetic home has no CoT texts
        asked.append((version, embedder))
        return ["## CoT quality (v)", "", "this home's pool", ""]

    monkeypatch.setattr(rec_experiment, "_cot_quality_lines", this_homes_report)
    out, argv = _one_seed_table(llmcf_home, tmp_path)
    assert experiment.main([*argv, "--models", "DIN", "--variants", "llmcf"]) == 0
    path = out / "synth.json"
    table = json.loads(path.read_text())
    assert table["cot_quality"] and list(table["cot_quality_pools"]) == [table["runs"][0]["fingerprint"]]
    for r in table["runs"]:  # as if made on another machine's pool, by a table without per-pool reports
        r["fingerprint"] = "f" * 64
    table["cot_quality"] = ["## CoT quality (v)", "", "the other machine's pool", ""]
    del table["cot_quality_pools"]
    path.write_text(json.dumps(table))

    assert experiment.main([*argv, "--models", "SASRec", "--variants", "llmcf"]) == 0
    after = json.loads(path.read_text())
    here = next(r["fingerprint"] for r in after["runs"] if r["model"] == "SASRec")
    assert after["cot_quality_pools"]["f" * 64] == table["cot_quality"]
    assert after["cot_quality_pools"][here] == ["## CoT quality (v)", "", "this home's pool", ""]
    assert asked[-1][1] == "synth-enc"  # the runs' embedder, not the configured one
    md = (out / "synth.md").read_text()
    kept = "## CoT quality (v): the pool of ranking with examples (data fingerprint `ffffffffffff`)"
    assert kept in md and "the other machine's pool" in md
    assert f"the pool of next item with examples (data fingerprint `{here[:12]}`)" in md
    assert md.index(kept) < md.index(f"`{here[:12]}`)")

    capsys.readouterr()
    assert experiment.main(["--dataset", "synth", "--render", "--out", str(out)]) == 0
    assert (out / "synth.md").read_text().split("\n", 4)[4] == md.split("\n", 4)[
        4
    ]  # all but the command line
