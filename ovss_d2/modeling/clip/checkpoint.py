"""Reading CLIP weights from local files in the layouts people actually have.

Supported layouts of ``MODEL.CLIP.PRETRAINED=<path>``:

- **open_clip**: a plain state dict (``.pt``/``.pth``/``.bin``) as released on the hub, a
  ``.safetensors`` file, or an open_clip training checkpoint (``{"epoch", "state_dict", ...}``
  with the ``module.`` prefix of DDP).
- **OpenAI**: the original release files (``ViT-B-16.pt``...), TorchScript archives in fp16 whose
  state dict also holds ``input_resolution``, ``context_length`` and ``vocab_size``; or the same
  state dict saved with ``torch.save``.
"""
import os
import warnings
import zipfile
from typing import Dict, Tuple

import torch

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        # TorchScript archives hold the module's code; torch.save archives only data.pkl.
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def read_clip_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read a local CLIP checkpoint.

    Returns:
        (state_dict, layout): float32 tensors with open_clip/OpenAI key names (no ``module.``
        prefix), and ``"openai"`` or ``"open_clip"``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP checkpoint file not found: {path!r} (MODEL.CLIP.PRETRAINED). Pass an existing "
            "file in open_clip or OpenAI layout, an open_clip pretrained tag, or 'none'."
        )
    layout = "open_clip"
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    elif _is_torchscript_archive(path):
        with warnings.catch_warnings():  # OpenAI's release files are TorchScript: only their tensors are read
            warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        layout = "openai"
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"Cannot read CLIP checkpoint {path!r}: {e}") from e
        if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
            ckpt = ckpt["state_dict"]
        if not isinstance(ckpt, dict) or not ckpt:
            raise ValueError(f"CLIP checkpoint {path!r} holds no state dict.")
        state_dict = ckpt
    if any(k in state_dict for k in OPENAI_EXTRA_KEYS):
        layout = "openai"
    state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_EXTRA_KEYS}
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return state_dict, layout


def load_clip_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Load ``state_dict`` into an open_clip model strictly, adapting the known layout differences
    (OpenAI's text keys under a custom-text model, position embeddings of another size)."""
    from open_clip.model import convert_to_custom_text_state_dict
    from open_clip.model import resize_pos_embed

    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != model.logit_scale.ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state_dict, model)
    # TorchScript archives also store non-persistent buffers (the text causal mask).
    non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    state_dict = {k: v for k, v in state_dict.items() if k not in non_persistent}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"CLIP checkpoint {path!r} does not match the model named by MODEL.CLIP.NAME: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys "
            f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}."
        )
