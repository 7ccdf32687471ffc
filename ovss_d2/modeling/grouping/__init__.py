"""Grouping and clustering heads shared by the annotation-free methods: GroupViT-style grouping
blocks (ZeroSeg) and online pixel clustering with the IIC objective (ViL-Seg)."""
from .group_block import (AssignAttention, CrossAttentionBlock, GroupingBlock, TokenMixer, assignment_to_pixels,
                          compose_assignments, straight_through_assign)

__all__ = ["AssignAttention", "CrossAttentionBlock", "GroupingBlock", "TokenMixer", "assignment_to_pixels",
           "compose_assignments", "straight_through_assign"]

# ViL-Seg: online clustering head, IIC mutual information, K-means mode
from .clustering import (OnlineClusteringHead, cluster_average, iic_joint_distribution, iic_loss, kmeans,  # noqa: E402
                         mutual_information, undo_hflip)

__all__ += ["OnlineClusteringHead", "cluster_average", "iic_joint_distribution", "iic_loss", "kmeans",
            "mutual_information", "undo_hflip"]

# collapse diagnostics of grouping models (tools/zeroseg_diagnostics.py)
from .diagnostics import (average_statistics, distinct_embeddings, group_oracle_labels,  # noqa: E402
                          mean_pairwise_cosine, segment_statistics)

__all__ += ["average_statistics", "distinct_embeddings", "group_oracle_labels", "mean_pairwise_cosine",
            "segment_statistics"]
