"""Building blocks shared by the cost-aggregation methods (SED, ERR-Seg): cost-map embedding,
spatial and class-level fusion, guided upsampling, and class rejection."""
from .blocks import (ClassLinearAttention, ConvNeXtBlock, CostEmbedding, DoubleConv, GradualFusionLayer,
                     linear_attention)
from .efficient import ClassFusion, SpatialFusion, UpBlock
from .rejection import (REJECTED_LOGIT, apply_class_selection, crm_scores, crm_select, fill_rejected,
                        topk_union)

__all__ = [
    "ClassLinearAttention", "ConvNeXtBlock", "CostEmbedding", "DoubleConv", "GradualFusionLayer",
    "linear_attention", "topk_union", "apply_class_selection", "fill_rejected", "REJECTED_LOGIT",
    "crm_scores", "crm_select", "ClassFusion", "SpatialFusion", "UpBlock",
]
