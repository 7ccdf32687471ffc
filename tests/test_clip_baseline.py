import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from helpers import register_tiny_splits, tiny_cfg, train_args
from known_answer import CLASSES, expected_metrics, register_known_answer, set_known_answer_weights
from ovss_d2.engine import OVSSTrainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("baseline_data"))
    register_tiny_splits(root)
    return root


def test_import_registers_the_baseline():
    assert META_ARCH_REGISTRY.get("CLIPDenseBaseline") is not None


def test_eval_only_through_train_net_gives_the_known_answer(tmp_path):
    """A baseline whose weights make it segment hand-built colour stripes exactly
    (tests/known_answer.py): its predictions are the stripes' classes, and train_net's evaluation
    (test mapper, model, evaluator with the seen / unseen split) reports the metrics counted here
    from the ground truth, which differs from the stripes in known places."""
    import train_net
    from PIL import Image

    answers, labels = register_known_answer("known_answer_val", str(tmp_path / "data"))
    extra = ("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64")
    cfg = tiny_cfg(str(tmp_path), train="known_answer_val", test="known_answer_val", extra=extra)
    model = OVSSTrainer.build_model(cfg).eval()
    set_known_answer_weights(model, value_path=True)
    for i, answer in enumerate(answers):
        image = np.array(Image.open(tmp_path / "data" / "images" / f"{i:03d}.png"))
        with torch.no_grad():
            out = model([{"image": torch.from_numpy(image).permute(2, 0, 1), "height": 64, "width": 64}])
        assert np.array_equal(out[0]["sem_seg"].argmax(0).numpy(), answer), i
    weights = str(tmp_path / "known_answer.pth")
    torch.save({"model": model.state_dict()}, weights)

    args = train_args(str(tmp_path / "eval"), train="known_answer_val", test="known_answer_val",
                      extra=extra + ("MODEL.WEIGHTS", weights))
    args.eval_only = True
    res = train_net.main(args)["sem_seg"]
    expected = expected_metrics(answers, labels, unseen=[CLASSES.index("ocean blue")])
    assert 40 < expected["mIoU"] < 90 and expected["IoU-slate grey"] == 0.0  # not a trivial answer
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-6), key
    assert (tmp_path / "eval" / "inference" / "known_answer_val" / "sem_seg_evaluation.json").is_file()


def test_prediction_is_cosine_of_dense_and_text_embeddings(data_root, tmp_path):
    """The baseline's logits are exactly the scaled cosine of the CLIP value-path embeddings and the
    template-averaged text embeddings, computed here by hand."""
    cfg = tiny_cfg(str(tmp_path))
    model = OVSSTrainer.build_model(cfg).eval()
    model.set_vocabulary(["cat", "dog, puppy"])
    image = torch.randint(0, 255, (3, 37, 53), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 37, "width": 53}])[0]["sem_seg"]
    assert out.shape == (2, 37, 53)  # odd size in, same size out
    assert torch.allclose(out.sum(0), torch.ones(37, 53), atol=1e-5)
    clip = model.clip.model
    x = (image.float() - model.pixel_mean) / model.pixel_std
    x = F.pad(x, (0, 64 - 53, 0, 64 - 37))[None]  # padded to a multiple of 32
    with torch.no_grad():
        blocks = clip.visual.transformer.resblocks
        tokens = clip.visual.conv1(x).flatten(2).transpose(1, 2)
        grid = torch.cat([clip.visual.class_embedding[None, None], tokens], 1)
        h = clip.visual.ln_pre(grid + clip.visual.positional_embedding)  # 64x64: the native grid
        for blk in blocks[:-1]:
            h = blk(h)
        last = blocks[-1]
        v = F.linear(last.ln_1(h[:, 1:]), last.attn.in_proj_weight[128:], last.attn.in_proj_bias[128:])
        dense = clip.visual.ln_post(last.attn.out_proj(v)) @ clip.visual.proj  # (1, 64 tokens, 64)
        text = model.class_embeddings().mean(1)
        logits = 100.0 * F.normalize(dense, dim=-1) @ F.normalize(text, dim=-1).T  # (1, 64, 2)
        logits = logits.transpose(1, 2).reshape(1, 2, 8, 8)
        probs = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).softmax(1)
    assert torch.allclose(out, probs[0, :, :37, :53], atol=1e-4)


def test_output_follows_requested_size(data_root, tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    model = OVSSTrainer.build_model(cfg).eval()
    image = torch.from_numpy(np.zeros((3, 24, 32), np.uint8))
    with torch.no_grad():  # an image resized by the mapper is mapped back to its original size
        out = model([{"image": image, "height": 48, "width": 64}])[0]["sem_seg"]
    assert out.shape == (3, 48, 64)


def test_empty_vocabulary_is_a_clear_error(data_root, tmp_path):
    model = OVSSTrainer.build_model(tiny_cfg(str(tmp_path)))
    with pytest.raises(ValueError, match="vocabulary is empty"):
        model.set_vocabulary([])
