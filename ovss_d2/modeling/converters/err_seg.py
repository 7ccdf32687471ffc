"""The official ERR-Seg checkpoint layout (``lchen1019/ERR-Seg``) -> ovss-d2's ``ERRSeg``."""
from typing import Dict, Optional

import torch

from ...checkpoint import register_checkpoint_converter
from .common import rename_keys, shift_group

PREFIX = "sem_seg_head."
_D = PREFIX + r"decoder\."
_BLOCK = (r"(norm[12]\.(?:weight|bias)|attention\.(?:q|k|v|proj|sr_k|sr_v|norm_k|norm_v)\.(?:weight|bias)|"
          r"mlp\.fc[123]\.(?:weight|bias))")

RULES = [
    (PREFIX + r"clip_model\.(.+)", r"clip.model.\1"),
    (_D + r"corr_proj_convs\.(\d)\.0\.(weight|bias)", r"decoder.cost_embeds.\1.conv.\2"),
    (_D + r"low_corr_fusion\.(weight|bias)", r"decoder.cost_fusion.\1"),
    (_D + r"img_guidance_projection_agg\.(\d)\.0\.(weight|bias)", r"decoder.agg_guidance_proj.\1.0.\2"),
    (_D + r"low_img_fusion\.(weight|bias)", r"decoder.agg_guidance_fusion.\1"),
    (_D + r"img_guidance_projection_dec\.(\d)\.0\.(weight|bias)", r"decoder.dec_guidance_proj.\1.0.\2"),
    (_D + r"text_guidance_projection\.0\.(weight|bias)", r"decoder.text_guidance_proj.0.\1"),
    (_D + r"aggregator_layers\.(\d+)\.spatial_fusion\.sa\." + _BLOCK, r"decoder.layers.\1.spatial.block.\2"),
    (_D + r"aggregator_layers\.(\d+)\.spatial_fusion\.sa\.mlp\.dwconv\.dwconv\.(weight|bias)",
     r"decoder.layers.\1.spatial.block.mlp.dwconv.\2"),
    (_D + r"aggregator_layers\.(\d+)\.class_fusion\.sa\." + _BLOCK, r"decoder.layers.\1.klass.block.\2"),
    (_D + r"up_decoder([123])\.(up_conv\.(?:weight|bias))", shift_group(r"decoder.up.\1.\2")),
    (_D + r"up_decoder([123])\.textual_fusion\.(\d)\.(weight|bias)", shift_group(r"decoder.up.\1.fuse.\2.\3")),
    (_D + r"head\.(weight|bias)", r"decoder.head.\1"),
]

def is_err_seg_official(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(PREFIX + "decoder.aggregator_layers.") for k in state_dict)


def convert_err_seg_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename every key of an official ERR-Seg state dict; an unknown key raises
    :class:`UnmappedKeyError` naming it."""
    return rename_keys(state_dict, RULES, "official ERR-Seg")


@register_checkpoint_converter
def err_seg_official_layout(state_dict: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    return convert_err_seg_official(state_dict) if is_err_seg_official(state_dict) else None
