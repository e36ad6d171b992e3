"""Writing and loading a trained model folder (see ``registry`` for the layout), and warm starts."""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmcf_core import fsio
from llmcf_core.config import RecModelConfig
from llmcf_core.rec import registry
from llmcf_core.rec.backbones import RecModel, build_model
from llmcf_core.rec.spec import DataSpec


@dataclass
class LoadedModel:
    model: RecModel
    meta: dict[str, Any]
    user_ids: np.ndarray  # raw ids; index i + 1
    item_ids: np.ndarray
    folder: Path

    def user_index(self, raw: np.ndarray) -> np.ndarray:
        return _index_of(self.user_ids, raw)

    def item_index(self, raw: np.ndarray) -> np.ndarray:
        return _index_of(self.item_ids, raw)


def _index_of(sorted_ids: np.ndarray, values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(values.shape, dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, values), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == values, pos + 1, 0).astype(np.int64)


def write_version(
    final: Path,
    state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    metrics: dict[str, Any],
    predictions: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the whole folder beside ``final`` and rename it into place (metrics.json last).

    ``predictions``: the test rows' scores (``registry.PREDICTIONS_FILE``, for paired statistics).

    ``final`` on an object store: written in a local temporary folder, then uploaded.
    """
    if fsio.is_url(final):
        fsio.cache_root().mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=fsio.cache_root()))
    else:
        staged = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        staged.mkdir(parents=True)
    torch.save(state, staged / registry.MODEL_FILE)
    np.savez(staged / registry.VOCAB_FILE, user_ids=user_ids, item_ids=item_ids)
    if predictions is not None:
        np.savez_compressed(staged / registry.PREDICTIONS_FILE, **predictions)
    registry.write_json_atomic(staged / registry.META_FILE, meta)
    registry.write_json_atomic(staged / registry.METRICS_FILE, metrics)
    registry.commit_folder(staged, final)
    return final


def load_version(folder: Any) -> LoadedModel:
    # A version folder never changes once complete: on an object store, load a cached local copy.
    folder = fsio.local_copy(folder, marker=registry.METRICS_FILE)
    meta = registry.read_json(folder / registry.META_FILE)
    spec = DataSpec.from_sizes(meta["spec"])
    hp = stored_model_config(meta["hparams"], folder / registry.META_FILE)
    model = build_model(meta["model"], spec, hp, meta["variant"])
    state = torch.load(folder / registry.MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(_upgrade_state(state, model))
    model.eval()
    vocab = np.load(folder / registry.VOCAB_FILE)
    return LoadedModel(model, meta, vocab["user_ids"], vocab["item_ids"], folder)


# ``hparams`` keys missing from model.json files written before the setting existed, with the value
# those models were trained with (no user-id dropout; the paper's sampled softmax), not today's default.
_HPARAMS_ADDED_LATER: dict[str, Any] = {"user_dropout": 0.0, "seq_loss": "sampled", "ict_dropout": 0.0}


def stored_model_config(hparams: dict[str, Any], source: Any) -> RecModelConfig:
    """The ``hparams`` of a saved model's ``model.json`` (named by ``source``) as ``RecModelConfig``.

    Keys it does not know are ignored. A missing key fails, naming the file, unless it is in
    ``_HPARAMS_ADDED_LATER``: today's config default could build another architecture than the
    one the state_dict was trained as.
    """
    fields = RecModelConfig.model_fields
    known = {k: v for k, v in hparams.items() if k in fields}
    missing = sorted(set(fields) - set(known) - set(_HPARAMS_ADDED_LATER))
    if missing:
        raise ValueError(f"{source}: hparams lack {', '.join(missing)}")
    try:
        return RecModelConfig.model_validate({**_HPARAMS_ADDED_LATER, **known})
    except ValueError as exc:  # pydantic.ValidationError
        raise ValueError(f"{source}: invalid hparams: {exc}") from None


# Parameters added after models were first saved, whose zero value reproduces the older model exactly
# (the history feedback embedding adds nothing when zero).
_ADDED_LATER = {"fields.feedback.weight"}


def _upgrade_state(state: dict[str, torch.Tensor], model: RecModel) -> dict[str, torch.Tensor]:
    """A state_dict saved before a parameter in ``_ADDED_LATER`` existed gets zeros for it."""
    fresh = model.state_dict()
    missing = {name for name in fresh if name not in state}
    if not missing or not missing <= _ADDED_LATER:
        return state  # load_state_dict reports anything else that does not match
    return {**state, **{name: torch.zeros_like(fresh[name]) for name in missing}}


# Embedding tables whose rows follow a vocabulary: copied row by row by raw id on a warm start.
_VOCAB_TABLES = {"fields.user.weight": "user", "fields.item.weight": "item"}
# Frozen side information comes from the current data, never from the previous model.
_DATA_BUFFERS = {"fields.item_text", "fields.item_genres"}


def warm_start_state(
    previous: LoadedModel, fresh: RecModel, user_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A state_dict for ``fresh`` that starts from ``previous`` where they agree.

    Same-shaped tensors are copied (not the item text/genre buffers, which come from the data); user/item embedding rows are copied by raw id (new ids keep
    their fresh initialisation); anything else keeps the fresh values. Returns the state and
    counts of what was copied.
    """
    old = previous.model.state_dict()
    state = fresh.state_dict()
    copied = {"tensors": 0, "user_rows": 0, "item_rows": 0}
    for name, value in state.items():
        if name not in old or name in _DATA_BUFFERS:
            continue
        if name in _VOCAB_TABLES:
            kind = _VOCAB_TABLES[name]
            new_ids, old_ids = (
                (user_ids, previous.user_ids) if kind == "user" else (item_ids, previous.item_ids)
            )
            at_old = _index_of(old_ids, new_ids)  # (n_new,), 0 = not in the old vocabulary
            hit = np.flatnonzero(at_old > 0)
            merged = value.clone()
            merged[torch.from_numpy(hit + 1)] = old[name][torch.from_numpy(at_old[hit])]
            state[name] = merged
            copied[f"{kind}_rows"] = int(len(hit))
        elif old[name].shape == value.shape:
            state[name] = old[name].clone()
            copied["tensors"] += 1
    return state, copied
