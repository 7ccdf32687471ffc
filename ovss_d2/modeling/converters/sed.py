"""The official SED checkpoint layout (``xb534/SED``), and ovss-d2's earlier one, -> ovss-d2's ``SED``."""
import re
from typing import Dict, Optional

import torch

from ...checkpoint import register_checkpoint_converter
from .common import rename_keys, shift_group

PREFIX = "sem_seg_head.predictor."
_T = PREFIX + r"transformer\."

RULES = [
    (PREFIX + r"clip_model\.(.+)", r"clip.model.\1"),
    (_T + r"conv1\.(weight|bias)", r"decoder.cost_embed.conv.\1"),
    (_T + r"decoder_guidance_projection\.(\d)\.0\.(weight|bias)", r"decoder.guidance_proj.\1.0.\2"),
    (_T + r"decoder_corr_guidance_projection\.(\d)\.0\.(weight|bias)", r"decoder.cost_guidance_proj.\1.0.\2"),
    (_T + r"decoder([123])\.(.+)", shift_group(r"decoder.layers.\1.\2")),
    (_T + r"head(\d)\.(weight|bias)", r"decoder.aux_heads.\1.\2"),
    (_T + r"head\.(weight|bias)", r"decoder.head.\1"),
]
# inside one decoder layer
LAYER_RULES = [
    (r"(decoder\.layers\.\d)\.up\.(weight|bias)", r"\1.skip_fusion.up_conv.\2"),
    (r"(decoder\.layers\.\d)\.conv\.double_conv\.(\d)\.(weight|bias)", r"\1.skip_fusion.fuse.\2.\3"),
    (r"(decoder\.layers\.\d)\.cnext\.(gamma|dwconv\.weight|dwconv\.bias|norm\.weight|norm\.bias|"
     r"pwconv1\.weight|pwconv1\.bias|pwconv2\.weight|pwconv2\.bias)", r"\1.spatial.\2"),
    (r"(decoder\.layers\.\d)\.attention\.attention\.([qkv])\.(weight|bias)", r"\1.class_attn.block.\2.\3"),
    (r"(decoder\.layers\.\d)\.attention\.MLP\.([02])\.(weight|bias)", r"\1.class_attn.block.mlp.\2.\3"),
    (r"(decoder\.layers\.\d)\.attention\.norm([12])\.(weight|bias)", r"\1.class_attn.block.norm\2.\3"),
    (r"((?!decoder\.layers\.).+)", r"\1"),
]
# ovss-d2's own SED layout before the decoders shared their class mixer and upsampling block
# (checkpoints trained with it load as they are)
EARLY_LAYOUT_RULES = [
    (r"(decoder\.layers\.\d+)\.up\.(weight|bias)", r"\1.skip_fusion.up_conv.\2"),
    (r"(decoder\.layers\.\d+)\.fuse\.convs\.(.+)", r"\1.skip_fusion.fuse.\2"),
    (r"(decoder\.layers\.\d+)\.class_attn\.((?:[qkv]|mlp\.\d|norm[12])\.(?:weight|bias))", r"\1.class_attn.block.\2"),
    (r"(.+)", r"\1"),
]


def is_sed_official(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(PREFIX + "transformer.decoder1.cnext.") for k in state_dict)


def convert_sed_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename every key of an official SED state dict; an unknown key raises
    :class:`UnmappedKeyError` naming it."""
    out = rename_keys(state_dict, RULES, "official SED")
    return rename_keys(out, LAYER_RULES, "official SED")


def is_sed_early_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    return any(re.fullmatch(r"decoder\.layers\.\d+\.fuse\.convs\.\d\.weight", k) for k in state_dict)


@register_checkpoint_converter
def sed_early_layout(state_dict: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    return rename_keys(state_dict, EARLY_LAYOUT_RULES, "ovss-d2 SED") if is_sed_early_layout(state_dict) else None


@register_checkpoint_converter
def sed_official_layout(state_dict: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    return convert_sed_official(state_dict) if is_sed_official(state_dict) else None
