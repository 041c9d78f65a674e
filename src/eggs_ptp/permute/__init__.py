"""Channel permutation that keeps the N:M layout: permute a layer's inputs to keep more score, and
fold the permutation into the layers producing those inputs so the model's function is unchanged."""

from eggs_ptp.permute.fold import permute_block, permute_stats
from eggs_ptp.permute.search import kept_score, search_permutation
from eggs_ptp.permute.structure import Fold, propose_folds

__all__ = ["Fold", "kept_score", "permute_block", "permute_stats", "propose_folds", "search_permutation"]
