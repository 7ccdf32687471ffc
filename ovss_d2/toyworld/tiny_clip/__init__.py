"""The tiny CLIP: a small open_clip CLIP trained contrastively on ToyWorld's caption corpus, and its
zero-shot evaluation. ``MODEL.CLIP.PRETRAINED toyworld`` loads it (ToyWorld registers that weights
tag).

Modules: :mod:`.corpus` (the items and texts a step draws), :mod:`.training` (the training loop, the
cached checkpoint's path), :mod:`.evaluation` (crop and dense-cell accuracies, loading a checkpoint).

The corpus (``captions`` split) shows the whole ToyWorld except the held-out pairs. Each step
mixes, all drawn from that split:

* object crops at 64 px, described by their full name in varied words ("a photo of a red striped
  shape.", "a shape that is red and striped."), with their outline ("a red striped star."), by
  their colour alone ("a red shape.", "something red.") or by their pattern alone ("a striped
  shape.");
* stuff windows ("a photo of a grass.", "a yellow wall.", "a wall.");
* whole scenes with their captions, and random windows of scenes with a caption of what they hold;
* dense items (``region_scenes`` > 0): scenes at ``region_size`` through the trunk, each object box
  and stuff window RoI-pooled from the stride-32 map, and single stride-32 cells that one class
  covers, each against a text of its class, so that the dense features localise.

A text is a positive of every image it describes: "a red shape." of every red object in the
batch, "a striped shape." of every striped one. The loss is a multi-positive InfoNCE in both
directions. Being asked to match an object to its colour and its pattern separately is what makes
the embedding of an unseen pair ("green plain shape") land where both of its words point.

Hyper-parameters were chosen on held-out *development* pairs (``DEV_HELD_OUT``, removed from the
corpus with ``holdout="dev"``), never on the unseen test classes.

The result is an ordinary open_clip training checkpoint (``{"epoch", "name", "state_dict"}``)
"""
from .corpus import (DEV_HELD_OUT, Batches, Content, cell_majority, class_content, describes, describes_matrix,
                     held_out, object_text, stuff_text)
from .evaluation import dense_cell_accuracy, load_tiny_clip, selection_report, zero_shot_crop_accuracy
from .training import TRAIN_SETTINGS, default_checkpoint_path, settings_key, train_tiny_clip

__all__ = [
    "TRAIN_SETTINGS", "DEV_HELD_OUT", "train_tiny_clip", "default_checkpoint_path", "settings_key", "held_out",
    "zero_shot_crop_accuracy", "dense_cell_accuracy", "load_tiny_clip", "selection_report",
    "Batches", "Content", "describes", "describes_matrix", "class_content", "object_text", "stuff_text",
    "cell_majority",
]
