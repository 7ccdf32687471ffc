"""A hand-built segmentation task whose correct answer is known, and CLIP ViT weights that make a
model give exactly that answer, for the CLIP dense baseline and ViL-Seg tests.

Images: 64 x 64 PNGs of flat colour stripes lying on the 8-pixel patch grid of ``ovss-tiny-vit``;
the right segmentation of a pixel is the class of its stripe's colour. The ground truth differs
from it in known places (a mislabelled block, an ignored border, a block of a class no image shows),
so the metrics of a model that segments correctly are known numbers, computed here with NumPy.

Weights (:func:`set_known_answer_weights`, in place on a model built with vocabulary ``CLASSES``):
every transformer block is the identity (residual branches zeroed), the patch embedding maps a
patch to ``A @ c`` (``c`` its mean normalised colour, ``A`` fixed), the text projection makes the
four class embeddings orthonormal, and the image projection maps the patch feature of each class
colour (its LayerNorms computed here in NumPy) to that class's text embedding. A patch of class k
then scores cosine 1 with class k and 0 with every other class.
"""
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

CLASSES = ["tomato red", "leaf green", "ocean blue", "slate grey"]  # no image shows slate grey
COLOURS = [(225, 35, 30), (35, 190, 50), (30, 60, 220)]
SIZE = 64
# (orientation, [(class, width in pixels), ...]); every boundary on a multiple of the patch size 8
LAYOUTS = [("v", [(0, 24), (1, 24), (2, 16)]), ("v", [(2, 16), (0, 40), (1, 8)]), ("h", [(1, 32), (2, 32)])]


def colour_classes(layout) -> np.ndarray:
    """(SIZE, SIZE) int64: the class of every pixel's stripe (the right segmentation)."""
    orientation, stripes = layout
    line = np.concatenate([np.full(width, c) for c, width in stripes])
    assert len(line) == SIZE
    return np.tile(line, (SIZE, 1)) if orientation == "v" else np.tile(line[:, None], (1, SIZE))


def write_known_answer_dataset(root: str) -> Tuple[str, str, List[np.ndarray], List[np.ndarray]]:
    """Writes ``root/images/*.png`` and ``root/labels/*.png``. Returns (image dir, label dir, the
    right segmentations, the ground-truth label maps)."""
    img_dir, gt_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    answers, labels = [], []
    for i, layout in enumerate(LAYOUTS):
        answer = colour_classes(layout)
        label = answer.astype(np.uint8)
        if i == 0:
            label[0:10, 0:24] = 1  # the top of the red stripe is labelled leaf green
        elif i == 1:
            label[:2], label[-2:], label[:, :2], label[:, -2:] = 255, 255, 255, 255  # ignored border
        else:
            label[40:48, 0:32] = 3  # slate grey, a class the images never show
        Image.fromarray(np.array(COLOURS, np.uint8)[answer]).save(os.path.join(img_dir, f"{i:03d}.png"))
        Image.fromarray(label).save(os.path.join(gt_dir, f"{i:03d}.png"))
        answers.append(answer)
        labels.append(label.astype(np.int64))
    return img_dir, gt_dir, answers, labels


def register_known_answer(name: str, root: str, unseen: Sequence[str] = ("ocean blue",)):
    """Writes the dataset and registers it (PNG images). Returns (answers, labels)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ovss_d2.data import register_sem_seg_dataset

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    img_dir, gt_dir, answers, labels = write_known_answer_dataset(root)
    register_sem_seg_dataset(name, img_dir, gt_dir, CLASSES, image_ext=".png", unseen_classes=list(unseen))
    return answers, labels


def expected_metrics(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], unseen: Sequence[int],
                     ignore: int = 255) -> Dict[str, float]:
    """The evaluator's metrics (percent) counted class by class: IoU over the classes predicted or
    labelled, accuracy over the labelled ones, pixel accuracy over labelled pixels."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in labels])
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    iou, acc, freq = {}, {}, {}
    for c in range(len(CLASSES)):
        tp = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        if union:
            iou[c] = tp / union
        if np.sum(gt == c):
            acc[c] = tp / np.sum(gt == c)
            freq[c] = np.sum(gt == c) / gt.size
    seen = [c for c in iou if c not in unseen]
    res = {"mIoU": 100 * np.mean(list(iou.values())), "mACC": 100 * np.mean(list(acc.values())),
           "pACC": 100 * np.mean(pred == gt), "fwIoU": 100 * sum(freq.get(c, 0) * iou[c] for c in iou),
           "mIoU-seen": 100 * np.mean([iou[c] for c in seen]),
           "mIoU-unseen": 100 * np.mean([iou[c] for c in unseen if c in iou]),
           "pACC-unseen": 100 * np.sum((pred == gt) & np.isin(gt, unseen)) / np.sum(np.isin(gt, unseen))}
    res["hIoU"] = 2 * res["mIoU-seen"] * res["mIoU-unseen"] / (res["mIoU-seen"] + res["mIoU-unseen"])
    res.update({f"IoU-{CLASSES[c]}": 100 * v for c, v in iou.items()})
    return res


def _layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


@torch.no_grad()
def set_known_answer_weights(model, value_path: bool) -> np.ndarray:
    """Sets the weights described in the module docstring on ``model`` (an ``OpenVocabSegmentor``
    on ``ovss-tiny-vit`` whose vocabulary is ``CLASSES``, in eval mode). ``value_path``: the dense
    embedding is MaskCLIP's value path of the last block (the CLIP baseline: that block's value and
    output projections become the identity) instead of the last block's output (ViL-Seg).
    Returns the (4, D) orthonormal class embeddings the text tower now gives."""
    clip = model.clip.model
    visual = clip.visual
    width, dim = visual.proj.shape
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(dim, len(CLASSES))))[0].T  # (4, D) orthonormal rows

    # text: the class embeddings -> q (text_projection @ pinv(E) @ q, E the normalised embeddings)
    emb = model.class_embeddings().mean(1).double().cpu().numpy()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    proj_t = clip.text_projection.double().cpu().numpy() @ np.linalg.pinv(emb) @ q
    clip.text_projection.copy_(torch.from_numpy(proj_t))

    # image: identity blocks, patch embedding A @ (mean normalised colour), no position embedding
    blocks = visual.transformer.resblocks
    for blk in blocks:
        for lin in (blk.attn.out_proj, blk.mlp.c_proj):
            lin.weight.zero_()
            lin.bias.zero_()
    for ln in (visual.ln_pre, visual.ln_post, blocks[-1].ln_1):
        ln.weight.fill_(1.0)
        ln.bias.zero_()
    visual.positional_embedding.zero_()
    p = visual.conv1.kernel_size[0]
    a = rng.normal(size=(width, 3))
    visual.conv1.weight.copy_(torch.from_numpy(a[:, :, None, None] / (p * p)).expand(-1, -1, p, p))
    eps = visual.ln_pre.eps
    mean = model.pixel_mean.flatten().double().cpu().numpy()
    std = model.pixel_std.flatten().double().cpu().numpy()
    feats = _layer_norm((np.array(COLOURS, np.float64) - mean) / std @ a.T, eps)  # after ln_pre
    if value_path:  # ln_1, then value and output projections = identity
        blk = blocks[-1]
        blk.attn.in_proj_weight[2 * width:].copy_(torch.eye(width))
        blk.attn.in_proj_bias[2 * width:].zero_()
        blk.attn.out_proj.weight.copy_(torch.eye(width))
        feats = _layer_norm(feats, eps)
    feats = _layer_norm(feats, eps)  # ln_post
    visual.proj.copy_(torch.from_numpy(np.linalg.pinv(feats) @ q[: len(COLOURS)]))
    return q
