"""Regression against the authors' released code: SED and ERR-Seg, ConvNeXt-B and ConvNeXt-L, on
seeded weights give the outputs their code gave (``tools/golden/*.npz``, written by
``tools/golden/make_golden.py`` from xb534/SED and lchen1019/ERR-Seg; the commits are stored in the
files).

Every tensor of the official state dict is rebuilt from the manifest in ../shared/reference with
the generator seeded by its key, converted by our converter and loaded strictly. Compared within
1e-4: the class scores, image in -> scores out, with each setting the authors run (SED: eval.sh's
1 x 1 pooling, with and without early rejection; ERR-Seg: with and without CRM), and one training
step (the losses, the kept classes and the gradients, within 1e-4 of the largest gradient; our step
runs in float64, see ``Golden.training_step``). Each model is built once for all its tests (module
fixtures, parametrized by size).

``OVSS_D2_TEST_DEVICE=cuda`` runs our side on a GPU (``make gpu-check`` does), TF32 off, against the
same stored outputs (made on the CPU) and within the same 1e-4; the default is the CPU. (Not yet run
on a GPU: none was at hand when the option was added.)
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, shared_reference
from ovss_d2.engine import OVSSTrainer, load_config
from ovss_d2.modeling.converters import convert_err_seg_official, convert_sed_official

sys.path.insert(0, os.path.join(REPO, "tools", "golden"))
from seeded import (GRAD_SAMPLES, golden_image, golden_labels, grad_sample_index, manifest_digest,  # noqa: E402
                    no_stochastic_layers, seeded_state_dict)

TOLERANCE = 1e-4  # on the CPU and on CUDA (TF32 off)
DEVICE = os.environ.get("OVSS_D2_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
CLIP_STATS = ([122.7709383, 116.7460125, 104.09373615], [68.5005327, 66.6321579, 70.3231630])
IMAGENET_STATS = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
SIZES = os.environ.get("OVSS_D2_GOLDEN_SIZES", "b,l").split(",")  # gpu-check --quick: "b"
MANIFEST_SIZE = {"b": "base", "l": "large"}
SED_CONFIG = {"b": "sed/eval_sed_convnext_b_768.yaml", "l": "sed/eval_sed_convnext_l_768.yaml"}
ERR_SEG_CONFIG = {"b": "err_seg/err_seg_convnext_b_640.yaml", "l": "err_seg/err_seg_convnext_l_640_768.yaml"}
# the trainable tensors of one training step and their entries (the authors' counts)
SED_TRAINABLE = {"b": (458, 89_598_220), "l": (460, 201_243_980)}
ERR_SEG_TRAINABLE = {"b": (398, 126_432_633), "l": (408, 268_653_049)}
# the image tower's stochastic layers as the authors' open_clip builds them: (largest drop path rate,
# head dropout); switched off on both sides for the compared training step
CLIP_STOCHASTIC = {"b": (0.0, 0.0), "l": (0.1, 0.1)}


def clip_stochastic(model):
    """(largest drop path rate, largest dropout) of the CLIP image tower."""
    drops = [m.drop_prob for m in model.clip.modules() if type(m).__name__ == "DropPath"]
    dropouts = [m.p for m in model.clip.modules() if isinstance(m, torch.nn.Dropout)]
    return max(drops, default=0.0), max(dropouts, default=0.0)


class Golden:
    """Our model with the golden run's seeded weights, vocabulary and settings."""

    def __init__(self, name: str, manifest: str, config: str, convert, opts):
        self.data = np.load(os.path.join(REPO, "tools", "golden", f"{name}.npz"))
        self.settings = json.loads(str(self.data["settings"]))
        with open(shared_reference(manifest)) as f:
            shapes = json.load(f)
        assert manifest_digest(shapes) == str(self.data["manifest_digest"]), \
            f"{manifest} is not the layout the golden outputs were made with"
        r = self.settings["resolution"]
        cfg = load_config(os.path.join(REPO, "configs", config), [
            "MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", DEVICE, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
            *[v.format(r=r, **self.settings) for v in opts]])
        torch.manual_seed(0)
        self.model = OVSSTrainer.build_model(cfg)
        self.official_name = {ours: official for ours, official in convert({k: k for k in shapes}).items()}
        self.model.load_state_dict(convert(seeded_state_dict(shapes)), strict=True)
        self.model.set_vocabulary(self.settings["classes"])
        self.model.train_class_names = list(self.settings["classes"])

    def scores(self) -> torch.Tensor:
        image = golden_image(*self.settings["image_size"])
        self.model.eval()
        with torch.no_grad():
            return self.model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])[0]["sem_seg"].cpu()

    def assert_scores(self, key: str) -> torch.Tensor:
        ours, theirs = self.scores(), torch.from_numpy(self.data[f"{key}/scores"])
        assert ours.shape == theirs.shape
        diff = (ours - theirs).abs().max().item()
        assert diff < TOLERANCE, f"{key}: scores differ from the authors' by {diff:.2e}"
        return ours

    def training_step(self):
        """Our losses and our gradients (by official name) of the golden training batch, computed in
        float64: the golden float32 gradients equal the authors' float64 ones within 1e-5 of the
        largest (``make_golden.assert_float32_robust``), while a float32 step of ours may put a ReLU
        input on the other side of 0 (a sum order of its own), which moves the gradients by up to
        1e-3 of the largest on the ConvNeXt-L weights. The model is float32 again afterwards."""
        s = self.settings["train_size"]
        batch = [{"image": golden_image(s, s, phase=i + 1), "sem_seg": golden_labels(s, s, blocks)}
                 for i, blocks in enumerate(self.settings["train_blocks"])]
        no_stochastic_layers(self.model)  # stochastic depth and dropout off, as in the golden run
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        text = self.model.class_embeddings  # the cached text embeddings are float32
        self.model.double()
        self.model.class_embeddings = lambda *args, **kwargs: text(*args, **kwargs).double()
        try:
            losses = self.model(batch)
            sum(losses.values()).backward()
        finally:
            del self.model.class_embeddings
            self.model.float()  # the seeded float32 weights, exactly; the gradients too
        grads = {self.official_name[n]: None if p.grad is None else p.grad.cpu()
                 for n, p in self.model.named_parameters() if p.requires_grad}
        return losses, grads

    def assert_training_step(self):
        """Compares the training step; returns the number of trainable tensors and their entries."""
        losses, grads = self.training_step()
        d = self.data
        theirs = {k[len("train/"):]: float(d[k]) for k in d.files if k.startswith("train/loss")}
        assert sorted(losses) == sorted(theirs)
        for k, v in losses.items():
            assert abs(v.item() - theirs[k]) < TOLERANCE, (k, v.item(), theirs[k])
        keys = [str(k) for k in d["train/grad_keys"]]
        assert sorted(grads) == sorted(keys), "the trainable tensors differ from the authors'"
        assert all(g is not None for g in grads.values())
        largest = float(d["train/grad_absmax"].max())
        tol = TOLERANCE * largest
        worst = 0.0
        for i, key in enumerate(keys):
            flat = grads[key].reshape(-1)
            idx = grad_sample_index(key, flat.numel())
            sample = torch.from_numpy(d["train/grad_samples"][i][:idx.numel()])
            worst = max(worst, (flat[idx] - sample).abs().max().item(),
                        abs(flat.abs().max().item() - float(d["train/grad_absmax"][i])))
            assert abs(flat.norm().item() - float(d["train/grad_norm"][i])) <= tol * flat.numel() ** 0.5, key
        assert worst < tol, f"gradients differ by {worst:.2e} ({worst / largest:.1e} of the largest)"
        self.model.zero_grad(set_to_none=True)  # ConvNeXt-L: 1 GB, while the module's other models run
        return len(grads), sum(g.numel() for g in grads.values())


@pytest.fixture(scope="module", params=SIZES)
def sed(request):
    size = request.param
    golden = Golden(f"sed_convnext_{size}", f"sed_convnext_{MANIFEST_SIZE[size]}.json", SED_CONFIG[size],
                    convert_sed_official, ["MODEL.SED.CLIP_RESOLUTION", "({r}, {r})"])
    golden.size = size
    return golden


@pytest.fixture(scope="module", params=SIZES)
def err_seg(request):
    size = request.param
    golden = Golden(f"err_seg_convnext_{size}", f"err_seg_vendored_convnext_{MANIFEST_SIZE[size]}.json",
                    ERR_SEG_CONFIG[size], convert_err_seg_official,
                    ["MODEL.ERR_SEG.CLIP_RESOLUTION", "({r}, {r})", "MODEL.ERR_SEG.TEST_RESOLUTION", "({r}, {r})",
                     "MODEL.ERR_SEG.CRM_TEST", "{crm_test}", "MODEL.ERR_SEG.CRM_TRAIN", "{crm_train}"])
    golden.size = size
    return golden


def test_sed_scores_equal_the_authors_eval_sh(sed):
    assert sed.model.decoder.layers[0].class_attn.test_pool == (1, 1)  # eval.sh's pooling
    sed.model.early_rejection_topk = 0
    sed.assert_scores("eval")


def test_sed_scores_with_early_rejection_equal_the_authors(sed):
    sed.model.early_rejection_topk = sed.settings["topk"]
    try:
        ours = sed.assert_scores("eval_rejection")
    finally:
        sed.model.early_rejection_topk = 0
    n = len(sed.settings["classes"])
    kept = ours.reshape(n, -1).amax(1) > 0
    assert 0 < kept.sum() < n  # classes were rejected (their scores are exactly 0)


def test_sed_training_step_equals_the_authors(sed):
    assert clip_stochastic(sed.model) == pytest.approx(CLIP_STOCHASTIC[sed.size])  # as their open_clip
    assert sed.assert_training_step() == SED_TRAINABLE[sed.size]


def test_err_seg_scores_equal_the_authors_with_and_without_crm(err_seg):
    model, n = err_seg.model, len(err_seg.settings["classes"])
    model.crm_test = 0
    err_seg.assert_scores("eval")
    model.crm_test = err_seg.settings["crm_test"]
    ours = err_seg.assert_scores("eval_crm")
    kept = torch.nonzero(ours.reshape(n, -1).amax(1) > 0).flatten()
    assert kept.tolist() == err_seg.data["eval_crm/kept"].tolist()


def test_err_seg_training_step_equals_the_authors(err_seg):
    model = err_seg.model
    assert clip_stochastic(model) == pytest.approx(CLIP_STOCHASTIC[err_seg.size])  # as their open_clip
    # the decoder's stochastic depth is theirs (0.025 x layer), off for the comparison on both sides
    drops = [m.drop_prob for m in model.decoder.modules() if type(m).__name__ == "DropPath"]
    assert drops == pytest.approx([0.025, 0.025, 0.05, 0.05, 0.075, 0.075])
    kept = []
    hook = model.decoder.register_forward_hook(lambda module, args, out: kept.append(out["kept"]))
    try:
        trainable = err_seg.assert_training_step()
    finally:
        hook.remove()
    assert kept[-1].tolist() == err_seg.data["train/kept"].tolist()
    assert trainable == ERR_SEG_TRAINABLE[err_seg.size]


def test_sed_comparison_fails_on_the_other_normalisation(sed):
    assert_fails_on_the_other_normalisation(sed, "sed")


def test_err_seg_comparison_fails_on_the_other_normalisation(err_seg):
    assert_fails_on_the_other_normalisation(err_seg, "err_seg")


def assert_fails_on_the_other_normalisation(golden, method):
    """The comparison is sharp enough to see the wrong input statistics (the bug ERR-Seg had)."""
    model = golden.model
    right = (model.pixel_mean.clone(), model.pixel_std.clone())
    wrong = IMAGENET_STATS if method == "sed" else CLIP_STATS
    expected = CLIP_STATS[0] if method == "sed" else IMAGENET_STATS[0]
    assert torch.allclose(right[0].flatten().cpu(), torch.tensor(expected))
    model.pixel_mean.copy_(torch.tensor(wrong[0]).view(-1, 1, 1))
    model.pixel_std.copy_(torch.tensor(wrong[1]).view(-1, 1, 1))
    if method == "sed":
        model.early_rejection_topk = 0
    else:
        model.crm_test = golden.settings["crm_test"]
    try:
        with pytest.raises(AssertionError, match="scores differ from the authors'"):
            golden.assert_scores("eval" if method == "sed" else "eval_crm")
    finally:
        model.pixel_mean.copy_(right[0])
        model.pixel_std.copy_(right[1])


def test_golden_files_are_small_and_name_the_authors_commits():
    files = [os.path.join(REPO, "tools", "golden", f"{method}_convnext_{size}.npz")
             for method in ("sed", "err_seg") for size in ("b", "l")]
    assert all(os.path.getsize(f) < 256 * 1024 for f in files)
    commits = {method: {str(np.load(f)["authors_commit"]) for f in files if os.path.basename(f).startswith(method)}
               for method in ("sed", "err_seg")}
    assert commits == {"sed": {"db20d93c0ec8b0ce7fae267a10f826dfc7da15f5"},
                       "err_seg": {"6e79c0d1d7ea9747d289fc533dbee864630dcb1e"}}
    assert all(GRAD_SAMPLES == np.load(f)["train/grad_samples"].shape[1] for f in files)
    configs = [json.loads(str(np.load(f)["settings"]))["config"] for f in files]
    assert configs == ["configs/convnextB_768.yaml", "configs/convnextL_768.yaml",
                       "configs/convnextB_640.yaml", "configs/convnextL_640.yaml"]
