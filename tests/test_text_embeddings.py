import pytest
import torch
import torch.nn.functional as F

import helpers  # noqa: F401
from ovss_d2.modeling.clip import CLIPWrapper, TextEmbeddingCache, resolve_templates


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIPWrapper("ovss-tiny-vit", "none").eval()


def test_second_request_runs_no_text_forward_and_changes_do(clip, tmp_path):
    cache = TextEmbeddingCache(clip, str(tmp_path), batch_size=4)
    names, templates = ["cat", "dog", "grass"], ["a photo of a {}.", "a {}."]
    clip.text_forward_count = 0
    first = cache(names, templates)
    calls = clip.text_forward_count
    assert calls == 2  # 6 prompts in batches of 4
    again = cache(names, templates)
    assert clip.text_forward_count == calls and torch.equal(first, again)
    # a fresh cache object (a new process) reads the disk cache: still no forward
    fresh = TextEmbeddingCache(clip, str(tmp_path), batch_size=4)
    assert torch.equal(fresh(names, templates), first) and clip.text_forward_count == calls
    cache(names, templates[:1])  # changed templates
    assert clip.text_forward_count > calls
    calls = clip.text_forward_count
    cache(["cat", "dog", "sand"], templates)  # changed class name
    assert clip.text_forward_count > calls
    calls = clip.text_forward_count
    with torch.no_grad():  # changed weights invalidate the key
        clip.model.ln_final.bias.add_(0.1)
    cache(names, templates)
    assert clip.text_forward_count > calls


def test_template_ensemble_and_synonyms_match_manual(clip):
    cache = TextEmbeddingCache(clip, None)
    templates = ["a photo of a {}.", "a drawing of a {}."]
    emb = cache(["person, people", "tree"], templates)
    assert emb.shape == (2, 2, 64)
    with torch.no_grad():
        def enc(texts):
            return F.normalize(clip.model.encode_text(clip.tokenize(texts)), dim=-1)
        person = (enc([t.format("person") for t in templates]) + enc([t.format("people") for t in templates])) / 2
        tree = enc([t.format("tree") for t in templates])
    assert torch.allclose(emb[0], F.normalize(person, dim=-1), atol=1e-5)
    assert torch.allclose(emb[1], tree, atol=1e-5)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 2), atol=1e-5)


def test_bad_vocabularies_and_templates(clip):
    cache = TextEmbeddingCache(clip, None)
    with pytest.raises(ValueError, match="vocabulary is empty"):
        cache([], ["a {}"])
    with pytest.raises(ValueError, match="empty or not a string"):
        cache(["cat", " "], ["a {}"])
    with pytest.raises(ValueError, match="exactly one"):
        cache(["cat"], ["no placeholder"])
    with pytest.raises(ValueError, match="Unknown prompt template set"):
        resolve_templates("nope")
    assert len(resolve_templates("imagenet_80")) == 80
    assert resolve_templates("imagenet_80", ["x {}"]) == ["x {}"]
