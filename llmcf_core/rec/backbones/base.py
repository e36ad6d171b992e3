"""The interface every backbone shares (RecBole style) and the two task families.

- ``forward(batch)`` == ``calculate_loss(batch)`` -> ``LossTerms`` (total, task, recon). Training
  calls the module itself so that DistributedDataParallel's hooks run.
- ``predict(batch)`` -> (B,) scores of the batch's (user, item) pairs: probabilities for ranking
  backbones, dot products for sequential ones.
- sequential backbones add ``full_sort_predict(batch)`` -> (B, n_items), column j = item index j+1.

A batch is a dict of tensors built by ``llmcf_core.rec.dataset.RecTables.batch``:

    user (B,)  item (B,)  hist (B, L)  hist_fb (B, L)  label (B,) float  [user_feat (B, U)]
    nb_user (B, K)  nb_item (B, K)  nb_hist (B, K, L)  nb_hist_fb (B, K, L)  nb_label (B, K)  nb_mask (B, K) bool
    [nb_user_feat (B, K, U)]

``hist_fb`` is the feedback on each history item (0 padding or unknown, 1 negative, 2 positive);
ranking backbones add its embedding to the history item embeddings (optional: absent = unknown).
``user_feat`` holds the user side feature indices (0 unknown; optional: absent = all unknown).
    nb_cot (B, K, D)  nb_cot_mask (B, K) bool       (only for the llmcf* variants)
    nb_tokens (B, K, P, C)                          (optional: precomputed example tokens, online)

The ``variant`` switch adds the in-context module (``llmcf_core.rec.ict``): ranking backbones
concatenate its output to their feature vector, sequential ones add ``seq_fusion_weight`` times it
to the user vector; either way it passes a learned scalar gate ``ict_gate`` that starts at zero. ``base`` is the backbone alone (``base_notext``: without the text fields), and
``llmcf_k0`` runs the ICT over the current sample's token only (no examples: the batch has no
``nb_*`` keys).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.fields import RankingFieldEmbeddings, RankingFields, SequentialFields
from llmcf_core.rec.ict import InContextModule, ict_config_for
from llmcf_core.rec.spec import VARIANTS, DataSpec, uses_text

Batch = dict[str, torch.Tensor]


class LossTerms(NamedTuple):
    total: torch.Tensor
    task: torch.Tensor
    recon: torch.Tensor  # 0 when the variant has no reconstruction


def mlp(d_in: int, dims: tuple[int, ...]) -> nn.Sequential:
    """ReLU MLP [d_in -> dims...] (the paper's [200, 80]); the output layer is the caller's."""
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(d_in, d), nn.ReLU()]
        d_in = d
    return nn.Sequential(*layers)


class RecModel(nn.Module):
    task: ClassVar[str]

    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
        self.spec_sizes = spec.sizes()
        self.hp = hp
        self.variant = variant
        self.ict: InContextModule | None = None
        self.ict_gate: nn.Parameter | None = None

    def _gate_the_ict(self) -> None:
        """The ICT output enters through a scalar gate that starts at zero (ReZero, Flamingo's gated
        cross-attention): with ``build_model(seed=)`` an ICT variant then starts as exactly its base's
        function, and the ICT's share grows only as far as it lowers the loss. Gate 1 is the paper's
        ungated fusion. A plain Parameter: ``build_model``'s init leaves it at 0.

        ``llmcf_recon`` (a control) fixes the gate at 0: a buffer, not a parameter, so the module is
        trained by the reconstruction loss alone and the score is the backbone's."""
        if self.ict is not None and self.variant == "llmcf_recon":
            del self.ict_gate
            self.register_buffer("ict_gate", torch.zeros(()))
            return
        self.ict_gate = nn.Parameter(torch.zeros(())) if self.ict is not None else None

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # A model saved before the gate existed fused the ICT output ungated: a gate of 1 scores as it did.
        if self.ict_gate is not None and any(k.startswith(prefix + "ict.") for k in state_dict):
            state_dict.setdefault(prefix + "ict_gate", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def calculate_loss(self, batch: Batch) -> LossTerms:
        return self(batch)

    def predict(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def example_tokens(self, batch: Batch) -> torch.Tensor:
        """(B, K, P, C) ICT tokens of the batch's retrieved examples."""
        raise NotImplementedError

    def _in_context(self, batch: Batch, query_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ICT output (B, C) and reconstruction loss (scalar, 0 when not applicable)."""
        assert self.ict is not None
        if self.variant == "llmcf_k0":  # no examples: the sequence is the current sample's token
            B, C = query_feat.shape[0], self.ict.cfg.width
            tokens = query_feat.new_zeros(B, 0, self.ict.cfg.tokens_per_example, C)
            mask = torch.zeros(B, 0, dtype=torch.bool, device=query_feat.device)
            out, _ = self.ict(query_feat, tokens, mask)
            return self._drop_ict(out), query_feat.new_zeros(())
        tokens = batch["nb_tokens"] if "nb_tokens" in batch else self.example_tokens(batch)
        train_recon = self.training and "nb_cot" in batch
        out, recon = self.ict(
            query_feat,
            tokens,
            batch["nb_mask"],
            batch.get("nb_cot") if train_recon else None,
            batch.get("nb_cot_mask"),
        )
        return self._drop_ict(out), (recon if recon is not None else query_feat.new_zeros(()))

    def _drop_ict(self, out: torch.Tensor) -> torch.Tensor:
        """Training only: zero the ICT output (B, C) of a random ``hp.ict_dropout`` share of the
        samples (modality dropout, unscaled: a kept sample sees the scoring-time function). The
        backbone then keeps learning on its own, and the ICT is pushed to learn what it adds."""
        p = self.hp.ict_dropout
        if not self.training or p <= 0:
            return out
        keep = torch.rand(out.shape[0], 1, device=out.device) >= p  # (B, 1)
        return out * keep.to(out.dtype)


class RankingModel(RecModel):
    """CTR backbones: BCE on the label; the ICT output joins the backbone's feature vector."""

    task = "ranking"

    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        self.fields = RankingFields(spec, hp.embedding_dim, with_text=uses_text(variant))
        cfg = ict_config_for(
            variant,
            feature_dim=self.fields.feature_dim,
            cot_dim=spec.text_dim,
            width=hp.ict_width_ranking,
            layers=hp.ict_layers,
            heads=hp.ict_heads,
        )
        self.ict = InContextModule(cfg) if cfg is not None else None
        self.ict_dim = cfg.width if cfg is not None else 0
        self.n_fields = self.fields.feature_dim // hp.embedding_dim
        # Ungated, the RMS-normalised ICT output (RMS 1) outweighs Xavier-initialised field
        # embeddings (RMS ~0.01-0.2) from the first step (see deepfm.py).
        self._gate_the_ict()

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        """Logits (B,) from the field embeddings and the (gated) ICT output (B, C) or None."""
        raise NotImplementedError

    def ict_block_start(self, name: str, dim: int, base_size: int) -> int:
        """Where the ICT's ``ict_dim`` entries sit along ``dim`` of parameter ``name``, a layer the ICT
        widens (``base_size`` wide in the base): appended last, as ``with_ict`` does. A backbone that
        puts them elsewhere says so (``build_model`` copies the base's weights around the block)."""
        return base_size

    def example_tokens(self, batch: Batch) -> torch.Tensor:
        assert self.ict is not None
        ex_feat = self.fields.features(
            batch["nb_user"],
            batch["nb_item"],
            batch["nb_hist"],
            batch.get("nb_hist_fb"),
            batch.get("nb_user_feat"),
        )  # (B, K, F)
        return self.ict.example_tokens(ex_feat, batch.get("nb_cot"), batch["nb_label"])

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        user = batch["user"]
        if self.training and self.hp.user_dropout > 0:  # train the unknown user's embedding (index 0)
            user = user.masked_fill(torch.rand(user.shape, device=user.device) < self.hp.user_dropout, 0)
        f = self.fields(user, batch["item"], batch["hist"], batch.get("hist_fb"), batch.get("user_feat"))
        if self.ict is None:
            return self.score(f, None), f.stack.new_zeros(())
        ict_out, recon = self._in_context(batch, f.flat)  # (B, C), ()
        assert self.ict_gate is not None
        return self.score(f, self.ict_gate * ict_out), recon

    def forward(self, batch: Batch) -> LossTerms:
        logit, recon = self.logits(batch)
        task = F.binary_cross_entropy_with_logits(logit, batch["label"].float())
        return LossTerms(task + self.hp.alpha_ranking * recon, task, recon)

    def predict(self, batch: Batch) -> torch.Tensor:
        return torch.sigmoid(self.logits(batch)[0])


def with_ict(x: torch.Tensor, ict_out: torch.Tensor | None) -> torch.Tensor:
    """Concatenate the ICT output (B, C) to a feature vector (B, d) when there is one."""
    return x if ict_out is None else torch.cat((x, ict_out), dim=-1)


class SequentialModel(RecModel):
    """Next-item backbones: softmax over the whole catalogue (``seq_loss: full``), or sampled softmax
    over the target and ``n_negatives`` uniform items (``sampled``, the paper's)."""

    task = "sequential"

    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        self.hidden = hp.seq_hidden
        self.fields = SequentialFields(spec, hp.seq_hidden, with_text=variant not in ("base", "base_notext"))
        cfg = ict_config_for(
            variant,
            feature_dim=self.fields.feature_dim,
            cot_dim=spec.text_dim,
            width=hp.ict_width_sequential,
            layers=hp.ict_layers,
            heads=hp.ict_heads,
        )
        if cfg is not None and cfg.width != hp.seq_hidden:
            raise ValueError("the sequential ICT width must equal seq_hidden (its output is added)")
        self.ict = InContextModule(cfg) if cfg is not None else None
        # u + seq_fusion_weight * gate * ict_out: gate 1 is the paper's fusion (0.1 * ict_out);
        # starting at 0, an ICT variant built with build_model(seed=) starts as its base.
        self._gate_the_ict()
        self.n_items = spec.n_items

    @property
    def item_emb(self) -> nn.Embedding:
        return self.fields.item

    def encode(self, hist: torch.Tensor) -> torch.Tensor:
        """User vector (B, H) from the history (B, L) (right-padded with 0, oldest first)."""
        raise NotImplementedError

    def example_tokens(self, batch: Batch) -> torch.Tensor:
        assert self.ict is not None
        ex_feat = self.fields.features(batch["nb_hist"], batch["nb_item"])  # (B, K, 4H)
        return self.ict.example_tokens(ex_feat, batch.get("nb_cot"), batch["nb_label"])

    def user_vector(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.encode(batch["hist"])  # (B, H)
        if self.ict is None:
            return u, u.new_zeros(())
        query = self.fields.features(batch["hist"], None)  # (B, 4H): the target is what we predict
        ict_out, recon = self._in_context(batch, query)  # (B, H), ()
        assert self.ict_gate is not None
        return u + self.hp.seq_fusion_weight * self.ict_gate * ict_out, recon

    def forward(self, batch: Batch) -> LossTerms:
        u, recon = self.user_vector(batch)  # (B, H)
        target = batch["item"]  # (B,)
        if self.hp.seq_loss == "full":  # cross-entropy over the whole catalogue (small catalogues)
            task = F.cross_entropy(
                u @ self.item_emb.weight[1:].T, target - 1
            )  # (B, n_items), column = index - 1
            return LossTerms(task + self.hp.alpha_sequential * recon, task, recon)
        neg = torch.randint(1, self.n_items + 1, (self.hp.n_negatives,), device=u.device)  # (N,)
        pos_logit = (u * self.item_emb(target)).sum(-1, keepdim=True)  # (B, 1)
        neg_logit = u @ self.item_emb(neg).T  # (B, N)
        neg_logit = neg_logit.masked_fill(
            neg[None, :] == target[:, None], float("-inf")
        )  # no false negatives
        logits = torch.cat((pos_logit, neg_logit), dim=1)  # (B, 1 + N): the target is class 0
        task = F.cross_entropy(logits, torch.zeros_like(target))
        return LossTerms(task + self.hp.alpha_sequential * recon, task, recon)

    def predict(self, batch: Batch) -> torch.Tensor:
        u, _ = self.user_vector(batch)
        return (u * self.item_emb(batch["item"])).sum(-1)  # (B,)

    def full_sort_predict(self, batch: Batch) -> torch.Tensor:
        u, _ = self.user_vector(batch)
        return u @ self.item_emb.weight[1:].T  # (B, n_items)
