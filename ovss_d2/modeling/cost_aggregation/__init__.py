"""Cost aggregation (SED, ERR-Seg). Shared steps: the cost-map embedding (``cost_embedding``), the
pooled class mixer (``class_mixer``), the guided upsampling block (``guided_upsampling``), class
selection and its fill (``class_selection``), per-class blocks run a few classes at a time
(``class_chunks``). Each method's own blocks: SED's gradual fusion layer (``gradual_fusion``),
ERR-Seg's efficient spatial and class fusion (``escf``)."""
from .class_chunks import chunked_over_classes
from .class_mixer import PooledClassMixer
from .class_selection import (REJECTED_LOGIT, crm_scores, crm_select, fill_rejected, select_class_rows,
                              select_classes, topk_union)
from .cost_embedding import CostEmbedding
from .escf import ESCFLayer, FusionBlock, SpatialFusion
from .gradual_fusion import ClassLinearAttention, ConvNeXtBlock, GradualFusionLayer, linear_attention
from .guided_upsampling import GuidedUpsampling

__all__ = [
    "chunked_over_classes", "PooledClassMixer", "REJECTED_LOGIT", "crm_scores", "crm_select", "fill_rejected",
    "select_class_rows", "select_classes", "topk_union", "CostEmbedding", "ESCFLayer", "FusionBlock",
    "SpatialFusion", "ClassLinearAttention", "ConvNeXtBlock", "GradualFusionLayer", "linear_attention",
    "GuidedUpsampling",
]
