"""Caches never give a wrong result and never stop a run (issue 28, items 6, 11 and 14): a text-
embedding file that was changed or belongs to another vocabulary is recomputed with a warning; a
cache folder that cannot be written (blocked, full disk) falls back to memory with one warning and
leaves no temporary file; a damaged ToyWorld folder is named with what is missing and the fix."""
import logging
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from helpers import REPO, log_records
from ovss_d2 import toyworld
from ovss_d2.modeling.clip import CLIPWrapper, TextEmbeddingCache

TEMPLATES = ["a photo of a {}.", "a {}."]
LOGGER = "ovss_d2.modeling.clip.text_embeddings"


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIPWrapper("ovss-tiny-vit", "none").eval()


def cache_file(folder):
    files = [f for f in os.listdir(folder) if f.endswith(".pt")]
    assert len(files) == 1, files
    return os.path.join(folder, files[0])


def tensor_of(data):
    """The embedding tensor of a cache file's contents, whatever its layout."""
    return data["embeddings"] if isinstance(data, dict) else data


def warnings_of(logged):
    return [r.getMessage() for r in logged if r.levelno >= logging.WARNING]


# ---- item 6: a cache file is checked before it is used ------------------------------------------------------
def test_a_changed_cache_file_is_recomputed_with_a_warning(clip, tmp_path):
    """Two class rows swapped inside the file (grass and sky would swap in the output)."""
    names = ["grass", "sky", "cat"]
    truth = TextEmbeddingCache(clip, None)(names, TEMPLATES)  # memory only: no file involved
    TextEmbeddingCache(clip, str(tmp_path))(names, TEMPLATES)
    path = cache_file(tmp_path)
    data = torch.load(path, weights_only=True)
    emb = tensor_of(data)
    emb[[0, 1]] = emb[[1, 0]].clone()
    torch.save(data, path)
    with log_records(LOGGER) as logged:
        got = TextEmbeddingCache(clip, str(tmp_path))(names, TEMPLATES)
    assert torch.equal(got, truth)
    warned = warnings_of(logged)
    assert len(warned) == 1 and path in warned[0] and "checksum" in warned[0]
    # the file was rewritten: a new process reads it without warning
    with log_records(LOGGER) as logged:
        assert torch.equal(TextEmbeddingCache(clip, str(tmp_path))(names, TEMPLATES), truth)
    assert not warnings_of(logged)


def test_a_cache_file_of_another_vocabulary_is_not_used(clip, tmp_path):
    """A file of another vocabulary under this vocabulary's name (copied over it)."""
    mine, other = ["grass", "sky"], ["red square", "blue star", "sand"]
    truth = TextEmbeddingCache(clip, None)(mine, TEMPLATES)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    TextEmbeddingCache(clip, str(tmp_path / "a"))(mine, TEMPLATES)
    TextEmbeddingCache(clip, str(tmp_path / "b"))(other, TEMPLATES)
    with open(cache_file(tmp_path / "b"), "rb") as src, open(cache_file(tmp_path / "a"), "wb") as dst:
        dst.write(src.read())
    with log_records(LOGGER) as logged:
        got = TextEmbeddingCache(clip, str(tmp_path / "a"))(mine, TEMPLATES)
    assert got.shape == truth.shape and torch.equal(got, truth)
    warned = warnings_of(logged)
    assert len(warned) == 1 and "other class names" in warned[0]


def test_the_cache_file_records_what_it_holds(clip, tmp_path):
    names = ["grass", "sky, heaven"]
    emb = TextEmbeddingCache(clip, str(tmp_path))(names, TEMPLATES)
    data = torch.load(cache_file(tmp_path), weights_only=True)
    import hashlib

    assert data["classes"] == names and data["templates"] == TEMPLATES and data["shape"] == list(emb.shape)
    assert data["sha256"] == hashlib.sha256(emb.numpy().tobytes()).hexdigest()


# ---- item 11: a cache folder that cannot be written ------------------------------------------------------------
def test_a_blocked_cache_folder_falls_back_to_memory_with_one_warning(clip, tmp_path):
    """OVSS_D2_CACHE below a file: no cache folder can be made there (as with a read-only one)."""
    (tmp_path / "file").write_text("not a folder")
    blocked = str(tmp_path / "file" / "text_embeddings")
    cache = TextEmbeddingCache(clip, blocked)
    with log_records(LOGGER) as logged:
        a = cache(["grass", "sky"], TEMPLATES)
        b = cache(["cat", "dog", "sand"], TEMPLATES)
        clip.text_forward_count = 0
        assert torch.equal(cache(["grass", "sky"], TEMPLATES), a) and clip.text_forward_count == 0  # kept in memory
    warned = warnings_of(logged)
    assert len(warned) == 1 and "cannot be written" in warned[0] and "OVSS_D2_CACHE" in warned[0]
    assert torch.equal(a, TextEmbeddingCache(clip, None)(["grass", "sky"], TEMPLATES)) and b.shape[0] == 3
    assert sorted(os.listdir(tmp_path)) == ["file"]


FULL_DISK_SCRIPT = """
import logging, sys
sys.path.insert(0, {repo!r})
import ovss_d2, torch
from ovss_d2.modeling.clip import CLIPWrapper, TextEmbeddingCache
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
torch.manual_seed(0)
cache = TextEmbeddingCache(CLIPWrapper("ovss-tiny-vit", "none").eval(), sys.argv[1])
for names in (["cat", "dog"], ["grass", "sky", "sand"]):
    print("shape", tuple(cache(names, ["a photo of a {{}}."]).shape), flush=True)
"""


def _full_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))


def test_a_full_disk_falls_back_to_memory_and_leaves_no_temporary_file(tmp_path):
    """Every cache file write fails part-way (a 256-byte file-size limit, as on a full disk): the
    run goes on, one warning, nothing left in the folder."""
    folder = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT.format(repo=REPO), str(folder)],
                          capture_output=True, text=True, timeout=300, preexec_fn=_full_disk,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["shape (2, 1, 64)", "shape (3, 1, 64)"], proc.stdout
    warned = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 1 and "cannot be written" in warned[0], proc.stderr
    assert os.listdir(folder) == []


# ---- item 14: a damaged ToyWorld folder -----------------------------------------------------------------------
def test_a_damaged_toyworld_folder_names_what_is_missing(tmp_path):
    root = str(tmp_path / "world")
    toyworld.generate(root, sizes={"val": 3}, progress=False)
    toyworld.generate(root)  # intact: accepted as it is
    os.remove(os.path.join(root, "val", "labels", "000001.png"))
    open(os.path.join(root, "val", "images", "000002.png"), "wb").close()  # emptied
    toyworld.register_toyworld(root, prefix="tw_damaged")
    try:
        for load in (lambda: toyworld.generate(root), lambda: DatasetCatalog.get("tw_damaged_val")):
            with pytest.raises(OSError, match=r"ToyWorld cache .*world is damaged") as info:
                load()
            message = str(info.value)
            assert "val/labels/000001.png" in message and "val/images/000002.png" in message
            assert f"rm -rf {root}" in message and "regenerates it" in message
    finally:
        for name in [n for n in DatasetCatalog.list() if n.startswith("tw_damaged")]:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
