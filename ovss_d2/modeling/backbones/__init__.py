from .masked_vit import MAEDecoder, MaskedViTEncoder, masked_patch_mse, patchify, sincos_position_embedding

__all__ = ["MaskedViTEncoder", "MAEDecoder", "masked_patch_mse", "patchify", "sincos_position_embedding"]
