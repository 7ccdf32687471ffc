#!/usr/bin/env python
"""Golden outputs of the authors' SED and ERR-Seg code, for ``tests/test_golden.py``.

    python tools/golden/make_golden.py sed /path/to/SED-checkout              # sed_convnext_b.npz
    python tools/golden/make_golden.py err_seg /path/to/ERR-Seg-checkout      # err_seg_convnext_b.npz
    python tools/golden/make_golden.py sed /path/to/SED-checkout --size l     # sed_convnext_l.npz
    python tools/golden/make_golden.py err_seg /path/to/ERR-Seg-checkout --size l

For maintainers: the tests read the ``.npz`` files written here and never need the authors' code.
The checkout (https://github.com/xb534/SED, https://github.com/lchen1019/ERR-Seg) is used as it is:
nothing of it is copied, built or installed. Its vendored ``open_clip`` is put first on the import
path, so this runs in a process of its own and imports nothing of ovss-d2. Their code needs
``einops`` (their requirements.txt) besides this environment's torch, timm and detectron2, e.g.
``pip install --target /tmp/einops einops`` and ``PYTHONPATH=/tmp/einops``. On one CPU thread
SED takes about 2 min for ConvNeXt-B and 3.5 min for ConvNeXt-L (it builds three ConvNeXt CLIPs per
model and embeds 80 templates per class), ERR-Seg 0.5 and 1 min; ConvNeXt-L (``--size l``: their
``convnextL`` config) needs about 7 GiB of memory.

Runtime shims only, no code change: no download (open_clip is asked for no pretrained weights:
every tensor is then set from ``seeded.py``), ``.cuda()`` is a no-op (CPU), ``torch.histc`` counts
integer inputs as floats (ERR-Seg's CRM; CUDA's histc takes integers, the CPU's does not), Pillow's
removed ``Image.LINEAR`` alias (detectron2 v0.6), and settings their configs or scripts set, put on
the built modules: the input resolution (SED hard-codes 768; 128 here keeps the tests fast), SED's
``TEST.FAST_INFERENCE`` / ``TEST.TOPK``, ERR-Seg's ``SAMPLE_CLASSES_NUM`` (eval.sh's per-benchmark
value) and stochastic depth and dropout off for the training step (the compared gradients need the
same layers; their ConvNeXt-L image tower has both: drop path 0.1, head dropout 0.1). SED's text
embeddings are computed by their own ``class_embeddings`` after the seeded weights are loaded (their
constructor computes them from the CLIP weights it loads).

The settings are chosen so that no outcome hinges on float32 rounding (asserted): SED's early
rejection and ERR-Seg's CRM decisions have margins, and the training step's gradients, recomputed
with the model in float64, agree with the float32 ones within 1e-5 of the largest (with a ReLU input
within rounding of 0 they depend on the order of the sums, up to 1e-3 of the largest).

Every tensor of their model's state dict is drawn from a generator seeded by its key
(``seeded.seeded_state_dict``); the tests rebuild the same weights from the official manifests in
``../shared/reference`` (the digest of (key, shape) pairs is stored to check they agree).
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# The settings of the golden runs (stored in the outputs; the tests read them from there). ConvNeXt-L
# runs the same settings with the authors' ConvNeXt-L config (other class names for SED-L, other
# labels for ERR-Seg-L's training step, see below).
SED = {
    "config": "configs/convnextB_768.yaml",
    "classes": ["sky", "tree", "road", "person"],
    "resolution": 128,
    "image_size": (48, 64),
    "topk": 1,
    "train_size": 128,
    "train_blocks": [[[0, 1], [2, 3]], [[1, 1], [3, 0]]],
}
ERR_SEG = {
    "config": "configs/convnextB_640.yaml",
    "classes": ["sky", "tree", "road", "person, people", "car", "building", "grass", "water", "wall", "dog"],
    "resolution": 128,
    "image_size": (48, 64),
    "crm_test": 4,
    "crm_train": 4,
    "train_size": 128,
    # image 0: 2 ground-truth classes (the authors fill up with their lowest-id candidates);
    # image 1: 5 ground-truth classes, more than CRM_TRAIN (they keep the 4 lowest ids)
    "train_blocks": [[[6, 6], [9, 6]], [[8, 2, 7], [5, 8, 4]]],
}
SETTINGS = {
    ("sed", "b"): SED,
    # on the ConvNeXt-L weights each of SED-B's four classes is the best somewhere (early rejection
    # would reject none); with these four it rejects "grass" at the first layer
    ("sed", "l"): dict(SED, config="configs/convnextL_768.yaml", classes=["car", "building", "grass", "water"]),
    ("err_seg", "b"): ERR_SEG,
    # with B's labels a ReLU input of the L decoder is within float32 rounding of 0 (see
    # assert_float32_robust); classes 6 and 7 swapped, none is
    ("err_seg", "l"): dict(ERR_SEG, config="configs/convnextL_640.yaml",
                           train_blocks=[[[7, 7], [9, 7]], [[8, 2, 6], [5, 8, 4]]]),
}


def install_shims(checkout: str, device: str = "cpu") -> None:
    """The shims above; on a GPU (``device`` "cuda", ``time_authors.py``) ``.cuda()`` stays real."""
    sys.path.insert(0, HERE)
    sys.path.insert(0, checkout)
    sys.path.insert(0, os.path.join(checkout, "open_clip", "src"))  # their vendored open_clip
    import PIL.Image

    if not hasattr(PIL.Image, "LINEAR"):
        PIL.Image.LINEAR = PIL.Image.BILINEAR
    import torch

    if device == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    histc = torch.histc
    torch.histc = lambda x, *args, **kwargs: histc(x if x.is_floating_point() else x.float(), *args, **kwargs)
    import open_clip

    assert os.path.realpath(open_clip.__file__).startswith(os.path.realpath(checkout)), open_clip.__file__
    create = open_clip.create_model_and_transforms

    def create_without_download(name, pretrained=None, **kwargs):
        return create(name, pretrained=None, **kwargs)

    open_clip.create_model_and_transforms = create_without_download


def build(checkout: str, add_config, config: str, classes, opts, device: str = "cpu"):
    from detectron2.modeling import build_model

    return build_model(load_cfg(checkout, add_config, config, classes, opts, device))


def load_cfg(checkout: str, add_config, config: str, classes, opts, device: str = "cpu"):
    """Their config file with ``classes`` as the training and test vocabulary."""
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config

    vocab = os.path.join(tempfile.mkdtemp(), "classes.json")
    with open(vocab, "w") as f:
        json.dump(classes, f)
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_config(cfg)
    cfg.merge_from_file(os.path.join(checkout, config))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", vocab,
                         "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", vocab, *opts])
    return cfg


def load_seeded(model):
    import torch
    from seeded import manifest_digest, seeded_state_dict

    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes), strict=True)
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(0)
    return manifest_digest(shapes)



def inference(model, image):
    import torch

    with torch.no_grad():
        out = model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])
    return out[0]["sem_seg"].float().numpy()


def training_step(model, settings):
    """Losses and gradients of one training step on two images and their labels."""
    from seeded import golden_image, golden_labels, grad_summary

    s = settings["train_size"]
    batch = [{"image": golden_image(s, s, phase=i + 1), "sem_seg": golden_labels(s, s, blocks)}
             for i, blocks in enumerate(settings["train_blocks"])]
    model.train()
    with contextlib.redirect_stdout(io.StringIO()):  # SED prints the parameters without gradients
        losses = model(batch)
    sum(losses.values()).backward()
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    missing = [k for k, p in trainable if p.grad is None]
    assert not missing, f"trainable parameters without gradient: {missing[:5]}"
    keys, samples, absmax, norms = grad_summary((k, p.grad) for k, p in trainable)
    out = {f"train/{k}": np.float64(v.item()) for k, v in losses.items()}
    out.update({"train/grad_keys": np.array(keys), "train/grad_samples": samples, "train/grad_absmax": absmax,
                "train/grad_norm": norms})
    return out


def assert_float32_robust(model, settings, out, rng_state, float64_inside=()) -> None:
    """The golden step must not hinge on float32 rounding: the same step in float64 gives the same
    gradients within 1e-5 of the largest, 10x below the tests' tolerance. A ReLU input within
    rounding of 0 fails this: its gradient is then on or off depending on the order of the sums
    (ERR-Seg-B's labels do that on the ConvNeXt-L weights, to 1e-3 of the largest gradient).
    ``float64_inside``: modules whose ``torch.empty`` buffers must be float64 (the default dtype is
    switched while they run)."""
    import torch

    model.double()
    for module in float64_inside:
        def forward64(*args, _forward=module.forward, **kwargs):
            torch.set_default_dtype(torch.float64)
            try:
                return _forward(*args, **kwargs)
            finally:
                torch.set_default_dtype(torch.float32)

        module.forward = forward64
    for p in model.parameters():
        p.grad = None
    torch.set_rng_state(rng_state)
    out64 = training_step(model, settings)
    assert list(out64["train/grad_keys"]) == list(out["train/grad_keys"])
    largest = float(out["train/grad_absmax"].max())
    diff = max(float(np.nanmax(np.abs(out64["train/grad_samples"] - out["train/grad_samples"]))),
               float(np.abs(out64["train/grad_absmax"] - out["train/grad_absmax"]).max()))
    print(f"float32 vs float64 gradients: {diff:.2e} ({diff / largest:.1e} of the largest)")
    assert diff < 1e-5 * largest, f"float32 and float64 gradients differ by {diff / largest:.1e} of the largest"


def run_sed(checkout: str, st):
    import torch
    from sed import add_sed_config
    from sed.modeling.transformer.sed_predictor import SEDPredictor
    from sed.third_party import imagenet_templates
    from seeded import golden_image, no_stochastic_layers

    real_embeddings = SEDPredictor.class_embeddings
    SEDPredictor.class_embeddings = lambda self, names, templates, clip: torch.zeros(len(templates), len(names), 1)

    def model_for(pooling):
        model = build(checkout, add_sed_config, st["config"], st["classes"],
                      ["MODEL.SEM_SEG_HEAD.POOLING_SIZES", pooling])
        model.clip_resolution = (st["resolution"], st["resolution"])
        digest = load_seeded(model)
        p = model.sem_seg_head.predictor
        with torch.no_grad():  # as their constructor does with the CLIP weights it loads
            emb = real_embeddings(p, p.class_texts, imagenet_templates.IMAGENET_TEMPLATES, p.clip_model)
        p.text_features = p.text_features_test = emb.permute(1, 0, 2).float()
        return model, digest

    out = {}
    model, digest = model_for("[1,1]")  # eval.sh
    model.eval()
    image = golden_image(*st["image_size"])
    out["eval/scores"] = inference(model, image)
    aggregator = model.sem_seg_head.predictor.transformer
    model.fast_inference = aggregator.fast_infer = True  # TEST.FAST_INFERENCE
    aggregator.topK = st["topk"]  # TEST.TOPK
    margins = []
    valid = aggregator.get_valid_idx_from_mask

    def recorded(mask, topK):  # how far each layer's decision is from flipping (k = 1)
        best2 = mask.topk(2, dim=1).values
        others = torch.where(mask == best2[:, :1], best2[:, 1:], best2[:, :1])  # best score of the others
        margins.append((mask - others).amax(dim=(0, 2, 3)).abs().min().item())
        return valid(mask, topK)

    aggregator.get_valid_idx_from_mask = recorded
    out["eval_rejection/scores"] = inference(model, image)
    assert st["topk"] == 1 and min(margins) > 1e-4, f"a rejection decision is within {min(margins)} of flipping"
    kept = np.flatnonzero(out["eval_rejection/scores"].reshape(len(st["classes"]), -1).max(1) > 0)
    assert 0 < len(kept) < len(st["classes"]), f"rejection should drop some classes, kept {kept}"
    del model
    model, digest2 = model_for("[2,2]")  # training
    assert digest == digest2
    no_stochastic_layers(model)
    rng = torch.get_rng_state()
    out.update(training_step(model, st))
    p = model.sem_seg_head.predictor  # its text features are no buffers: model.double() leaves them
    p.text_features, p.text_features_test = p.text_features.double(), p.text_features_test.double()
    assert_float32_robust(model, st, out, rng)
    return out, digest


def run_err_seg(checkout: str, st):
    import torch
    from err_seg import add_err_seg_config
    from seeded import golden_image, no_stochastic_layers

    r = st["resolution"]
    model = build(checkout, add_err_seg_config, st["config"], st["classes"],
                  ["INPUT.CROP.SIZE", f"({r}, {r})", "INPUT.SIZE_DIVISIBILITY", str(st["train_size"]),
                   "MODEL.SEM_SEG_HEAD.SAMPLE_CLASSES_NUM", str(st["crm_test"])])
    digest = load_seeded(model)
    decoder = model.sem_seg_head.decoder
    selected, margins = [], []
    select = decoder.select_classes

    def recorded(corr, gt_classes, K=32):
        margins.append(crm_margins(corr, K))
        selected.append(select(corr, gt_classes, K=K))
        return selected[-1]

    decoder.select_classes = recorded

    out = {}
    model.eval()
    image = golden_image(*st["image_size"])
    out["eval_crm/scores"] = inference(model, image)
    out["eval_crm/kept"] = np.sort(selected[-1][0].numpy())
    decoder.K = len(st["classes"])  # SAMPLE_CLASSES_NUM = N: CRM keeps every class
    out["eval/scores"] = inference(model, image)
    model.sem_seg_head.tokens = model.sem_seg_head.cache = None  # their text caches (same vocabulary)
    decoder.K = st["crm_train"]
    no_stochastic_layers(model)
    rng = torch.get_rng_state()
    out.update(training_step(model, st))
    out["train/kept"] = np.sort(selected[-1].numpy(), axis=1)
    assert all(gap > 2 * ties + 1e-3 for ties, gap in margins), f"a CRM choice is close to a tie: {margins}"
    assert_float32_robust(model, st, out, rng, float64_inside=[decoder])  # its buffers: torch.empty
    assert np.sort(selected[-1].numpy(), axis=1).tolist() == out["train/kept"].tolist()
    return out, digest


def crm_margins(corr, k: int):
    """How robust CRM's choice is to float noise: the number of near ties (less than 1e-6 apart)
    among every pixel's four best (template-averaged) costs, each of which could move two classes'
    scores by at most 1, and the gap between the k-th and (k+1)-th class scores (none at k = N)."""
    import torch

    mean = corr.mean(dim=1)  # (B, T, H, W)
    n = mean.shape[1]
    best = mean.topk(min(4, n), dim=1)
    near_ties = int(((best.values[:, :-1] - best.values[:, 1:]) < 1e-6).sum())
    weights = torch.tensor([1.0, 0.1, 0.01]).view(1, 3, 1, 1).expand_as(best.indices[:, :3])
    scores = torch.zeros(mean.shape[0], n).scatter_add_(1, best.indices[:, :3].flatten(1), weights.flatten(1))
    ordered = scores.sort(dim=1, descending=True).values
    cut_gap = (ordered[:, k - 1] - ordered[:, k]).min().item() if k < n else float("inf")
    return near_ties, cut_gap


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["sed", "err_seg"])
    parser.add_argument("checkout", help="a git checkout of the authors' repository")
    parser.add_argument("--size", choices=["b", "l"], default="b", help="ConvNeXt-B or ConvNeXt-L (default: b)")
    parser.add_argument("--output", default="", help=f"default: {HERE}/<method>_convnext_<size>.npz")
    args = parser.parse_args()
    checkout = os.path.abspath(args.checkout)
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    install_shims(checkout)
    settings = SETTINGS[args.method, args.size]
    outputs, digest = (run_sed if args.method == "sed" else run_err_seg)(checkout, settings)
    outputs["settings"] = np.array(json.dumps(settings))
    outputs["manifest_digest"] = np.array(digest)
    outputs["authors_commit"] = np.array(commit)
    path = args.output or os.path.join(HERE, f"{args.method}_convnext_{args.size}.npz")
    np.savez_compressed(path, **outputs)
    size = os.path.getsize(path) / 1024
    print(f"wrote {path} ({size:.0f} KiB) from {args.method} ({settings['config']}) at {commit}")
    for k, v in outputs.items():
        if k.startswith("train/loss"):
            print(f"  {k} = {float(v):.8f}")


if __name__ == "__main__":
    main()
