"""GroupViT-style grouping, as ZeroSeg's segmentation head uses it: the grouping block and the
composition of its assignments (:mod:`.group_block`), and the diagnostics of a grouping that collapsed
(:mod:`.collapse_diagnostics`, ``tools/zeroseg_diagnostics.py``)."""
from .collapse_diagnostics import (average_statistics, distinct_embeddings, group_oracle_labels, mean_pairwise_cosine,
                                   segment_statistics)
from .group_block import (AssignAttention, CrossAttentionBlock, GroupingBlock, TokenMixer, assignment_to_pixels,
                          compose_assignments, straight_through_assign)

__all__ = ["AssignAttention", "CrossAttentionBlock", "GroupingBlock", "TokenMixer", "assignment_to_pixels",
           "compose_assignments", "straight_through_assign",
           "average_statistics", "distinct_embeddings", "group_oracle_labels", "mean_pairwise_cosine",
           "segment_statistics"]
