"""Building blocks shared by the cost-aggregation methods (SED, ERR-Seg): cost-map embedding,
spatial and class-level fusion, guided upsampling, and class rejection."""
from .blocks import (ClassLinearAttention, ConvNeXtBlock, CostEmbedding, DoubleConv, GradualFusionLayer,
                     linear_attention)
from .rejection import REJECTED_LOGIT, apply_class_selection, compose_indices, fill_rejected, topk_union

__all__ = [
    "ClassLinearAttention", "ConvNeXtBlock", "CostEmbedding", "DoubleConv", "GradualFusionLayer",
    "linear_attention", "topk_union", "apply_class_selection", "fill_rejected", "compose_indices", "REJECTED_LOGIT",
]
