"""Regression against the authors' released code: SED-B and ERR-Seg-B on seeded weights give the
outputs their code gave (``tools/golden/*.npz``, written by ``tools/golden/make_golden.py`` from
xb534/SED and lchen1019/ERR-Seg; the commits are stored in the files).

Every tensor of the official state dict is rebuilt from the manifest in ../shared/reference with
the generator seeded by its key, converted by our converter and loaded strictly. Compared within
1e-4: the class scores, image in -> scores out, with each setting the authors run (SED: eval.sh's
1 x 1 pooling, with and without early rejection; ERR-Seg: with and without CRM), and one training
step (the losses, the kept classes and the gradients, within 1e-4 of the largest gradient).
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
from seeded import GRAD_SAMPLES, golden_image, golden_labels, grad_sample_index, manifest_digest, seeded_state_dict  # noqa: E402

TOLERANCE = 1e-4
CLIP_STATS = ([122.7709383, 116.7460125, 104.09373615], [68.5005327, 66.6321579, 70.3231630])
IMAGENET_STATS = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


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
            "MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
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
            return self.model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])[0]["sem_seg"]

    def assert_scores(self, key: str) -> torch.Tensor:
        ours, theirs = self.scores(), torch.from_numpy(self.data[f"{key}/scores"])
        assert ours.shape == theirs.shape
        diff = (ours - theirs).abs().max().item()
        assert diff < TOLERANCE, f"{key}: scores differ from the authors' by {diff:.2e}"
        return ours

    def training_step(self):
        """Our losses and our gradients (by official name) of the golden training batch."""
        s = self.settings["train_size"]
        batch = [{"image": golden_image(s, s, phase=i + 1), "sem_seg": golden_labels(s, s, blocks)}
                 for i, blocks in enumerate(self.settings["train_blocks"])]
        for m in self.model.modules():  # stochastic depth off, as in the golden run
            if type(m).__name__ == "DropPath":
                m.drop_prob = 0.0
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        losses = self.model(batch)
        sum(losses.values()).backward()
        grads = {self.official_name[n]: p.grad for n, p in self.model.named_parameters() if p.requires_grad}
        return losses, grads

    def assert_training_step(self):
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
        return grads


@pytest.fixture(scope="module")
def sed():
    return Golden("sed_convnext_b", "sed_convnext_base.json", "sed/eval_sed_convnext_b_768.yaml",
                  convert_sed_official, ["MODEL.SED.CLIP_RESOLUTION", "({r}, {r})"])


@pytest.fixture(scope="module")
def err_seg():
    return Golden("err_seg_convnext_b", "err_seg_vendored_convnext_base.json", "err_seg/err_seg_convnext_b_640.yaml",
                  convert_err_seg_official,
                  ["MODEL.ERR_SEG.CLIP_RESOLUTION", "({r}, {r})", "MODEL.ERR_SEG.TEST_RESOLUTION", "({r}, {r})",
                   "MODEL.ERR_SEG.CRM_TEST", "{crm_test}", "MODEL.ERR_SEG.CRM_TRAIN", "{crm_train}"])


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
    assert not [m for m in sed.model.clip.modules() if type(m).__name__ == "DropPath"]  # as their open_clip
    grads = sed.assert_training_step()
    assert len(grads) == 458 and sum(g.numel() for g in grads.values()) == 89_598_220


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
    assert not [m for m in model.clip.modules() if type(m).__name__ == "DropPath"]
    # the decoder's stochastic depth is theirs (0.025 x layer), off for the comparison on both sides
    drops = [m.drop_prob for m in model.decoder.modules() if type(m).__name__ == "DropPath"]
    assert drops == pytest.approx([0.025, 0.025, 0.05, 0.05, 0.075, 0.075])
    kept = []
    hook = model.decoder.register_forward_hook(lambda module, args, out: kept.append(out["kept"]))
    try:
        err_seg.assert_training_step()
    finally:
        hook.remove()
    assert kept[-1].tolist() == err_seg.data["train/kept"].tolist()


@pytest.mark.parametrize("method", ["sed", "err_seg"])
def test_golden_comparison_fails_on_the_other_normalisation(method, request):
    """The comparison is sharp enough to see the wrong input statistics (the bug ERR-Seg had)."""
    golden = request.getfixturevalue(method)
    model = golden.model
    right = (model.pixel_mean.clone(), model.pixel_std.clone())
    wrong = IMAGENET_STATS if method == "sed" else CLIP_STATS
    assert torch.allclose(right[0].flatten(), torch.tensor(CLIP_STATS[0] if method == "sed" else IMAGENET_STATS[0]))
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
    files = [os.path.join(REPO, "tools", "golden", f) for f in ("sed_convnext_b.npz", "err_seg_convnext_b.npz")]
    assert sum(os.path.getsize(f) for f in files) < 512 * 1024
    commits = {str(np.load(f)["authors_commit"]) for f in files}
    assert commits == {"db20d93c0ec8b0ce7fae267a10f826dfc7da15f5", "6e79c0d1d7ea9747d289fc533dbee864630dcb1e"}
    assert GRAD_SAMPLES == np.load(files[0])["train/grad_samples"].shape[1]
