"""The checkpointer: detectron2's, plus converters that recognise the official checkpoint layouts
of the methods (registered by each method) and translate them to ours on load."""
import logging
from typing import Callable, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger(__name__)

# Each converter takes a state dict and returns it converted, or None if it is not its layout.
CHECKPOINT_CONVERTERS: List[Callable[[Dict[str, torch.Tensor]], Optional[Dict[str, torch.Tensor]]]] = []


def register_checkpoint_converter(fn):
    CHECKPOINT_CONVERTERS.append(fn)
    return fn


def convert_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for convert in CHECKPOINT_CONVERTERS:
        converted = convert(state_dict)
        if converted is not None:
            logger.info(f"Converted checkpoint layout with {convert.__name__}")
            return converted
    return state_dict


class OVSSCheckpointer(DetectionCheckpointer):
    def _load_model(self, checkpoint):
        if isinstance(checkpoint.get("model"), dict):
            checkpoint["model"] = convert_state_dict(checkpoint["model"])
        return super()._load_model(checkpoint)
