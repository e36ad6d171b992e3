"""What a recommender model is built from: the data's sizes (``DataSpec``); its hyper-parameters are
``llmcf_core.config.RecModelConfig`` (``rec.model``).

``DataSpec`` carries the frozen item side information as arrays (text embeddings and genre ids per
item index), so a model holds everything it needs to score an item id: training, the saved model
folder and the online scorer all build the same model from it.

Index conventions (shared with ``llmcf_core.rec.dataset``): users and items are numbered from 1 in
the order of their sorted raw ids; 0 is padding (items) or an unknown user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# base         the backbone alone, with the item text fields (ranking backbones; sequential
#              backbones are id-based: text reaches them only through the ICT)
# base_notext  the backbone without any text field: the paper's comparison
# llmcf        backbone + ICT over the retrieved examples and their CoTs (the method)
# llmcf_wocot  ... without the CoT tokens; llmcf_mean: mean pooling instead of the decoder
# Controls (where does a lift come from?):
# llmcf_k0      the ICT with only the current sample's token: its capacity, no examples
# llmcf_random  random earlier pool examples with the retrieved examples' labels, not the neighbours
# llmcf_shufcot the retrieved examples with CoT vectors permuted among pool rows of the same label
# llmcf_recon   llmcf trained with its reconstruction loss, its output cut (gate fixed at 0): the
#               CoTs shape the shared embeddings as an auxiliary target; scoring is the backbone's
VARIANTS = (
    "base",
    "base_notext",
    "llmcf",
    "llmcf_wocot",
    "llmcf_mean",
    "llmcf_k0",
    "llmcf_random",
    "llmcf_shufcot",
    "llmcf_recon",
)
BASE_VARIANTS = ("base", "base_notext")
TASKS = ("ranking", "sequential")


def uses_icl(variant: str) -> bool:
    """The variant has the in-context module."""
    return variant not in BASE_VARIANTS


def needs_neighbors(variant: str) -> bool:
    """The variant reads retrieved examples (and so the pool, the neighbours and the CoTs)."""
    return uses_icl(variant) and variant != "llmcf_k0"


def uses_text(variant: str) -> bool:
    """The ranking backbone's fields include the item and history text embeddings."""
    return variant != "base_notext"


@dataclass
class DataSpec:
    n_users: int  # user indices 1..n_users; 0 = unknown user
    n_items: int  # item indices 1..n_items; 0 = padding
    n_genres: int  # genre indices 1..n_genres; 0 = padding
    history_len: int  # L
    k: int  # retrieved examples per sample
    item_text: np.ndarray  # (n_items + 1, D) float32, row 0 zeros: frozen item text embeddings
    item_genres: np.ndarray  # (n_items + 1, G) int64 genre indices, 0-padded
    # categorical user side features (e.g. age_group, gender, occupation): vocabulary size of each,
    # index 0 = unknown; () when the dataset has no users table
    user_feature_sizes: tuple[int, ...] = ()

    @property
    def text_dim(self) -> int:
        return int(self.item_text.shape[1])

    @property
    def max_genres(self) -> int:
        return int(self.item_genres.shape[1])

    def sizes(self) -> dict[str, int]:
        """The JSON-able part; ``from_sizes`` rebuilds a spec whose arrays a state_dict then fills."""
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_genres": self.n_genres,
            "history_len": self.history_len,
            "k": self.k,
            "text_dim": self.text_dim,
            "max_genres": self.max_genres,
            "user_features": list(self.user_feature_sizes),
        }

    @classmethod
    def from_sizes(cls, sizes: dict[str, int]) -> DataSpec:
        n_items = int(sizes["n_items"])
        return cls(
            n_users=int(sizes["n_users"]),
            n_items=n_items,
            n_genres=int(sizes["n_genres"]),
            history_len=int(sizes["history_len"]),
            k=int(sizes["k"]),
            item_text=np.zeros((n_items + 1, int(sizes["text_dim"])), dtype=np.float32),
            item_genres=np.zeros((n_items + 1, max(1, int(sizes["max_genres"]))), dtype=np.int64),
            user_feature_sizes=tuple(int(n) for n in sizes.get("user_features", ())),
        )
