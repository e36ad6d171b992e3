"""One config grammar for every job CLI: ``--profile`` and repeatable ``--set SECTION.FIELD=VALUE``.

Every module in ``jobs/`` (``_``-prefixed helpers aside) reads its settings through
``jobs._cli.load_settings``; a bad override is a bad argument (exit 2, one line on stderr naming it).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import jobs
from jobs._cli import load_settings

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(m.name for m in pkgutil.iter_modules(jobs.__path__) if not m.name.startswith("_"))

# Jobs that read no settings (so take no --profile/--set), with the reason. None today: every job
# in jobs/ loads the config (jobs._selftest, which does not, is private and skipped by its name).
NO_CONFIG: dict[str, str] = {}

CONFIG_JOBS = [name for name in JOBS if name not in NO_CONFIG]

DS, DAY = "ml-100k", "1998-01-15"
# Valid arguments that reach the settings before any real work: a bad --set must stop each job there.
REACHES_SETTINGS: dict[str, list[str]] = {
    "build_instructions": ["--dataset", DS, "--partition", DAY],
    "cot_report": ["--dataset", DS],
    "embed_upsert": ["--dataset", DS, "--partition", DAY],
    "evaluate_recgen": ["--dataset", DS, "--partition", DAY, "--version", "cand-1"],
    "experiment": ["--dataset", DS, "--models", "DIN", "--variants", "base", "--seeds", "1"],
    "finetune_recgen": ["--dataset", DS, "--partition", DAY],
    "generate_cot": ["--dataset", DS, "--partition", DAY],
    "ingest": ["--dataset", DS, "--partition", DAY],
    "promote_cot": ["--dataset", DS, "--version", "smollm2-135m__v1-lc"],
    "publish_recgen": ["--version", "cand-1"],
    "qdrant_admin": ["status", "--dataset", DS],
    "ray_head": ["status"],
    "replay": ["--dataset", DS, "--from", DAY, "--to", DAY],
    "retrieve": ["--dataset", DS, "--partition", DAY],
    "score": ["--dataset", DS, "--model", "DIN", "--user", "1", "--candidates", "1,2"],
    "train_rec": ["--dataset", DS, "--model", "DIN"],
}


@pytest.fixture
def job_env(llmcf_home, monkeypatch):
    """A temp LLMCF_HOME and no profile from the environment: ``local`` unless --profile says otherwise."""
    monkeypatch.delenv("LLMCF_PROFILE", raising=False)
    monkeypatch.delenv("LLMCF_CONFIG_FILE", raising=False)
    return llmcf_home


def test_discovery_finds_the_jobs():
    assert {"ingest", "generate_cot", "train_rec", "cot_report", "ray_head"} <= set(JOBS)
    assert set(NO_CONFIG) <= set(JOBS)  # the exemptions name real jobs
    assert sorted(REACHES_SETTINGS) == CONFIG_JOBS  # a new job needs a row here


@pytest.mark.parametrize("name", CONFIG_JOBS)
def test_help_lists_profile_and_set(name, capsys):
    module = importlib.import_module(f"jobs.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--profile PROFILE" in out and "config profile (default $LLMCF_PROFILE or local)" in out
    assert "--set SECTION.FIELD=VALUE" in out and "(repeatable)" in out


def test_python_m_help_of_every_job():
    """``python -m jobs.X --help`` itself (the ``__main__`` path), all jobs in one interpreter."""
    script = (
        "import runpy, sys\n"
        "for name in sys.argv[1:]:\n"
        "    sys.argv = [name, '--help']\n"
        "    try:\n"
        "        runpy.run_module(f'jobs.{name}', run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as exc:\n"
        "        print(f'@@ {name} exit={exc.code}', flush=True)\n"
        "    else:\n"
        "        print(f'@@ {name} exit=none', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *CONFIG_JOBS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    sections = done.stdout.split("usage: ")[1:]
    assert len(sections) == len(CONFIG_JOBS), done.stdout
    for name, text in zip(CONFIG_JOBS, sections, strict=True):
        assert f"@@ {name} exit=0" in text, text
        assert "--profile" in text and "--set" in text, f"jobs.{name}: {text}"


def test_no_job_loads_the_config_directly():
    for path in sorted((REPO / "jobs").glob("*.py")):
        if path.name != "_cli.py":
            assert "load_config" not in path.read_text(), f"{path.name}: use jobs._cli.load_settings"


@pytest.mark.parametrize("name", CONFIG_JOBS)
def test_bad_override_exits_2(name, job_env, capsys):
    module = importlib.import_module(f"jobs.{name}")
    argv = [*REACHES_SETTINGS[name], "--profile", "local", "--set", "nosuch.field=1"]
    assert module.main(argv) == 2
    out, err = capsys.readouterr()
    assert "LLMCF_RESULT" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "'nosuch.field=1'" in lines[0], err


def test_bad_override_from_the_command_line(job_env):
    """The real entry point: exit 2 and exactly one stderr line that names the override."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLMCF_PROFILE", "LLMCF_CONFIG_FILE")}
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cot_report", "--dataset", DS, "--set", "nosuch.field=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "LLMCF_RESULT" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        "cot_report: invalid argument: override 'nosuch.field=1' is not SECTION.FIELD=VALUE "
        "with a known section"
    ]


@pytest.mark.parametrize(
    "pair, message",
    [
        ("rec.no_such_field=1", "invalid override"),  # pydantic's error spans several lines
        ("cot.pool_fraction=7", "invalid override"),
        ("nonsense", "--set expects KEY=VALUE"),
        ("pool_fraction=0.5", "SECTION.FIELD=VALUE"),
    ],
)
def test_load_settings_bad_override_is_one_line_invalid_argument(pair, message, job_env):
    from llmcf_core.layout import InvalidArgument

    with pytest.raises(InvalidArgument) as exc:
        load_settings("local", [pair])
    assert message in str(exc.value) and repr(pair) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_load_settings_applies_overrides(job_env):
    from llmcf_core.config import load_config

    plain = load_config("local")
    assert load_settings("local", []) == plain
    assert load_settings(None, []) == plain  # no --profile: $LLMCF_PROFILE or local
    got = load_settings("local", ["ray.local_num_cpus=3", "rec.user_features=false", "cot.pool_fraction=0.5"])
    assert (got.ray.local_num_cpus, got.rec.user_features, got.cot.pool_fraction) == (3, False, 0.5)
    assert got.home == plain.home and got.embedding == plain.embedding
    assert load_config("local") == plain  # the cached profile is not changed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_job_honours_set(job_env, capsys):
    """jobs.ray_head status reports the ports it probes: the overridden ones."""
    from jobs import ray_head

    dashboard, gcs = _free_port(), _free_port()
    argv = ["status", "--set", f"ray.local_dashboard_port={dashboard}", "--set", f"ray.local_gcs_port={gcs}"]
    assert ray_head.main(argv) == 1  # nothing listens there
    assert capsys.readouterr().out.strip() == (
        f"not running: http://127.0.0.1:{dashboard} (GCS 127.0.0.1:{gcs})"
    )
