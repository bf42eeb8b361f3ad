"""Task affinity: which tasks to train together (``polytask affinity``; docs/affinity.md).

TAG lookahead affinity (Fifty et al., NeurIPS 2021) and gradient cosines from one short joint
run, and the groupings that maximise total affinity."""

from polytask.affinity.grouping import best_grouping, best_partners, groupings, partitions, score
from polytask.affinity.lookahead import Lookahead, lookahead
from polytask.affinity.run import AffinityError, estimate

__all__ = ["AffinityError", "Lookahead", "best_grouping", "best_partners", "estimate", "groupings", "lookahead",
           "partitions", "score"]
