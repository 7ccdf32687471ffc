"""A ConvNeXt small enough to train a CLIP on 2 CPU cores (ToyWorld, tests), registered in timm
so open_clip configs can name it like any timm trunk. Same architecture as ConvNeXt-B (stem,
4 stages at strides 4/8/16/32, LayerNorm head), fewer blocks and channels."""
from timm.models import build_model_with_cfg, register_model
from timm.models.convnext import ConvNeXt

# timm's pretrained-config registry entry (read by register_model): no weights, timm's default
# settings, so the build is unchanged; without it timm warns at every build that none is configured.
default_cfgs = {"convnext_ovss_tiny": {"description": "ovss-d2's tiny ConvNeXt; no pretrained weights "
                                                      "(tools/train_tiny_clip.py trains a CLIP with it)"}}


@register_model
def convnext_ovss_tiny(pretrained: bool = False, **kwargs) -> ConvNeXt:
    if pretrained:
        raise ValueError("convnext_ovss_tiny has no pretrained weights.")
    kwargs.setdefault("depths", (2, 2, 2, 2))  # two blocks a stage: dense features learn much faster than 1-1-2-1
    kwargs.setdefault("dims", (32, 64, 128, 256))
    return build_model_with_cfg(ConvNeXt, "convnext_ovss_tiny", False,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs)
