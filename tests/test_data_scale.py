"""Paper-scale data (issue 27): records kept as shared arrays, one webdataset index per source,
a sampler that jumps on resume, teacher-cache shards checked at start-up. Small sizes; the
full-size numbers come from tools/benchmark_data.py (docs/performance.md)."""
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from data_scale_sources import GOLDEN, MIXED_NAMES, make_mixed_sources, relative_records
from ovss_d2.data import build as data_build
from ovss_d2.data.build import SeededTrainingSampler, get_dataset_dicts, sample_seed, shared_records
from ovss_d2.data.image_caption import register_image_caption_dataset, webdataset_dicts
from ovss_d2.data.record_table import RecordTable
from ovss_d2.data.teacher_cache import TeacherFeatureCache, cache_description, finalize, write_shards


@pytest.fixture
def mixed_sources(tmp_path):
    root = str(tmp_path / "src")
    sources = make_mixed_sources(root)
    for name, source in sources.items():
        register_image_caption_dataset(name, source)
    yield root, sources
    for name in sources:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _as_lists(records):
    return [dict(r) for r in records]


def test_mixed_sources_give_the_records_of_the_list_of_dicts_code(mixed_sources, caplog):
    """Folder + JSONL + CSV + shards (one cut short): the same records, in the same order, as the
    list-of-dicts code recorded in tests/data (first start, which builds the indexes, and a second
    start that maps them), and the cut shard is named on both."""
    root, _ = mixed_sources
    with open(GOLDEN, encoding="utf-8") as f:
        expected = json.load(f)
    logger = logging.getLogger("ovss_d2.data.image_caption")
    logger.addHandler(caplog.handler)
    try:
        for start in ("first", "cached"):
            caplog.clear()
            records = get_dataset_dicts(MIXED_NAMES)
            assert len(records) == len(expected), start
            assert relative_records(records, root) == expected, start
            assert "00003.tar" in caplog.text, start
            # what the loader's workers see: the same records
            assert relative_records(shared_records(records), root) == expected
    finally:
        logger.removeHandler(caplog.handler)
    assert all(isinstance(p, RecordTable) for p in records.parts)  # no list of dicts is kept


def test_unusable_cache_folder_builds_in_memory(mixed_sources, monkeypatch, tmp_path):
    root, _ = mixed_sources
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("OVSS_D2_CACHE", str(blocker / "cache"))  # cannot be created: a file is in the way
    with open(GOLDEN, encoding="utf-8") as f:
        expected = json.load(f)
    assert relative_records(get_dataset_dicts(MIXED_NAMES), root) == expected


# ---- webdataset index --------------------------------------------------------------------------
def test_webdataset_index_is_reused_and_names_shards_changed_since(mixed_sources, monkeypatch, caplog):
    _, sources = mixed_sources
    shards = sources["dscale_shards"]
    from ovss_d2.data import image_caption

    # the header reader gives what tarfile gives, on whole and cut shards alike, and leaves
    # formats it does not read (PAX headers of long or non-ASCII names) to tarfile
    long_name = os.path.join(shards, "00004.tar")
    with tarfile.open(long_name, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((f"{'k' * 120}.jpg", b"\xff\xd8x"), (f"{'k' * 120}.txt", "été".encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    for shard in sorted(os.listdir(shards)):
        path = os.path.join(shards, shard)
        fast, slow = image_caption._scan_tar_members(path), image_caption._group_tar_members(path, fast=False)
        assert fast[:2] == slow[:2], shard
    assert image_caption._scan_tar_members(long_name)[0] == [["k" * 120, "k" * 120 + ".jpg", 1024 + 512, 3, "été"]]
    with pytest.raises(image_caption._UnusualTar):
        image_caption._group_tar_members(long_name, fast=True)
    os.remove(long_name)
    first = webdataset_dicts(shards)
    assert isinstance(first, RecordTable) and first.path  # one memory-mapped index for the whole source

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached index was not used")

    with monkeypatch.context() as m:  # a second start maps the index, it does not scan a shard
        m.setattr(image_caption, "_scan_shards", no_scan)
        again = webdataset_dicts(shards)
        assert list(again) == list(first)
    logger = logging.getLogger("ovss_d2.data.image_caption")
    logger.addHandler(caplog.handler)
    try:
        with open(os.path.join(shards, "00002.tar"), "r+b") as f:  # cut after the index was built
            f.truncate(3000)
        os.remove(os.path.join(shards, "00000.tar"))
        caplog.clear()
        records = webdataset_dicts(shards)
    finally:
        logger.removeHandler(caplog.handler)
    assert "00002.tar: 3000 bytes" in caplog.text and "truncated" in caplog.text
    assert "00000.tar: missing" in caplog.text
    assert {os.path.basename(r["file_name"]) for r in records} == {"00001.tar", "00002.tar", "00003.tar"}
    assert sum(r["file_name"].endswith("00001.tar") for r in records) == 5


# ---- sampler -----------------------------------------------------------------------------------
def _stream(size, seed, start=0, rank=0, world_size=1, n=100):
    sampler = SeededTrainingSampler(size, seed, start=start)
    sampler.rank, sampler.world_size = rank, world_size
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_stream_by_hand_and_exact_resume_across_epochs_and_ranks():
    size, seed = 37, 5
    full = _stream(size, seed, n=4 * size)
    # independent construction: epoch e is randperm(size) from a generator seeded for e
    by_hand = []
    for e in range(4):
        g = torch.Generator()
        g.manual_seed(data_build.epoch_seed(seed, e))
        by_hand += torch.randperm(size, generator=g).tolist()
    assert [i for i, _ in full] == by_hand
    assert [s for _, s in full] == [sample_seed(seed, p) for p in range(4 * size)]
    assert data_build.epoch_seed(seed, 0) == seed  # a first epoch is the stream of older versions
    for start in (0, 1, 36, 37, 50, 111):  # resumed mid-epoch, at a boundary, several epochs in
        assert _stream(size, seed, start=start, n=30) == full[start:start + 30]
    for world in (2, 3):  # ranks interleave into the single-process stream, resumed too
        for start in (0, 41):
            per_rank = [_stream(size, seed, start=start, rank=r, world_size=world, n=25) for r in range(world)]
            merged = [per_rank[p % world][p // world] for p in range(25 * world)]
            assert merged == full[start:start + 25 * world]


def test_sampler_resume_jumps_instead_of_drawing(monkeypatch):
    """Resuming a million epochs in draws one permutation (its epoch's) and no skipped sample."""
    calls = []
    real = torch.randperm

    def counting_randperm(n, *args, **kwargs):
        calls.append(n)
        return real(n, *args, **kwargs)

    monkeypatch.setattr(data_build.torch, "randperm", counting_randperm)
    size, seed, start = 1000, 3, 10**6 * 1000 + 123
    sampler = SeededTrainingSampler(size, seed, start=start)
    spied = []
    real_seed = data_build.sample_seed
    monkeypatch.setattr(data_build, "sample_seed", lambda s, p: spied.append(p) or real_seed(s, p))
    idx, s = next(iter(sampler))
    assert calls == [size]  # one epoch's order
    assert spied == [start]  # no sample before the resume position was drawn
    g = torch.Generator()
    g.manual_seed(data_build.epoch_seed(seed, 10**6))
    assert idx == real(size, generator=g)[123].item() and s == real_seed(seed, start)


# ---- teacher cache -----------------------------------------------------------------------------
def _features(records):
    """(n, 3, 4) features that encode each record's position, computed without a teacher."""
    pos = np.array([int(r["file_name"].split("_")[-1].split(".")[0]) for r in records], np.float32)
    return pos[:, None, None] + np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 16


def _small_cache(root, n=11, shard_size=4):
    files = [f"/data/imagenet/n{i % 3:08d}/img_{i}.JPEG" for i in range(n)]
    records = [{"file_name": f} for f in files]
    assert write_shards(root, records, _features, shard_size, progress=False) == [0, 1, 2]
    assert finalize(root, cache_description("t", [1, 2], 8, files, shard_size))
    return files, records


def test_teacher_cache_looks_names_up_without_a_dict(tmp_path):
    root = str(tmp_path / "cache")
    files, records = _small_cache(root)
    cache = TeacherFeatureCache(root)
    assert len(cache) == len(files) and list(cache.files) == files
    for i, f in enumerate(files):
        np.testing.assert_array_equal(cache[f], _features([records[i]])[0].astype(np.float16))
        assert cache.files.index(f) == i
    np.testing.assert_array_equal(cache.batch(files[2:7]), _features(records[2:7]).astype(np.float16))
    with pytest.raises(KeyError, match="img_99.JPEG is not in the teacher-feature cache"):
        cache["/data/imagenet/n00000000/img_99.JPEG"]
    # no per-name Python container (the old cache held a dict of every name in every process)
    assert not any(isinstance(v, (dict, list)) and len(v) >= len(files) for v in vars(cache).values())
    # a cache of version 1 (the image list inside index.json) reads the same
    with open(os.path.join(root, "index.json")) as f:
        old = dict(json.load(f), version=1, files=files)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(old, f)
    assert [cache[f].tolist() for f in files] == [TeacherFeatureCache(root)[f].tolist() for f in files]


def test_truncated_teacher_shard_is_named_at_start_and_rebuilt_alone(tmp_path):
    """Issue 28, item 13: a shard cut after the cache was built is named when the cache is opened
    (the train loader's mapper opens it before the first iteration), not by 'mmap length is greater
    than file size' in the middle of training; the cache tool recomputes that shard only."""
    root = str(tmp_path / "cache")
    _, records = _small_cache(root)
    shard1 = os.path.join(root, "shard_00001.npy")
    original = open(shard1, "rb").read()
    with open(shard1, "r+b") as f:
        f.truncate(len(original) - 10)
    with pytest.raises(ValueError, match=r"shard_00001\.npy: \d+ bytes, its header announces \d+ \(truncated") as e:
        TeacherFeatureCache(root)
    assert "cache_teacher_features.py" in str(e.value) and "shard_00000" not in str(e.value)
    mtimes = {s: os.stat(os.path.join(root, f"shard_0000{s}.npy")).st_mtime_ns for s in (0, 2)}
    assert write_shards(root, records, _features, 4, progress=False) == [1]  # the damaged shard only
    assert finalize(root, cache_description("t", [1, 2], 8, [r["file_name"] for r in records], 4))
    assert open(shard1, "rb").read() == original
    assert {s: os.stat(os.path.join(root, f"shard_0000{s}.npy")).st_mtime_ns for s in (0, 2)} == mtimes
    TeacherFeatureCache(root)  # whole again
    np.save(shard1, np.zeros((4, 3, 5), np.float16))  # replaced by a whole file of the wrong shape
    with pytest.raises(ValueError, match=r"shard_00001\.npy: holds rows of shape \(3, 5\), the other shards \(3, 4\)"):
        TeacherFeatureCache(root)


# ---- loader workers share the records ----------------------------------------------------------
def _benchmark_tool():
    import importlib.util
    import sys

    from helpers import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    spec = importlib.util.spec_from_file_location("benchmark_data", os.path.join(REPO, "tools", "benchmark_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _caption_length(record):
    return len(record["caption"]) + len(record["file_name"])


def _worker_growth_mb(tool, records, batches=(10, 250)):
    """[(PSS growth, anonymous PSS growth)] in MB of each of 2 loader workers between two
    iterations of the first epoch (batches of 200)."""
    from detectron2.config import CfgNode

    cfg = CfgNode({"SOLVER": {"IMS_PER_BATCH": 200}, "SEED": 0, "DATALOADER": {"NUM_WORKERS": 2},
                   "DATASETS": {"TRAIN": ()}})
    loader = data_build.build_train_loader(cfg, _caption_length, dataset_dicts=records)
    snapshots, _ = tool.loader_memory(loader, batches)
    return [(b["pss_mb"] - a["pss_mb"], b["pss_anon_mb"] - a["pss_anon_mb"])
            for a, b in zip(snapshots[0]["workers"], snapshots[1]["workers"])]


def test_loader_workers_do_not_copy_the_record_table(tmp_path, monkeypatch):
    """60,000 JSONL records through the training loader (2 workers, 50,000 samples): each worker's
    PSS stays flat (it only maps pages of the table file, never copies them: its anonymous PSS
    does not grow). Negative control, the same loader over the same records as a plain list of
    dicts (what the loader got before): each worker's anonymous PSS grows by megabytes, the pages
    whose reference counts it wrote."""
    tool = _benchmark_tool()
    table = str(tmp_path / "captions.jsonl")
    tool.write_caption_jsonl(table, 60_000)
    register_image_caption_dataset("dscale_pss", table)
    try:
        records = get_dataset_dicts(["dscale_pss"])
    finally:
        DatasetCatalog.remove("dscale_pss")
        MetadataCatalog.remove("dscale_pss")
    assert isinstance(records, RecordTable) and len(records) == 60_000
    shared = _worker_growth_mb(tool, records)
    dicts = list(records)
    monkeypatch.setattr(data_build, "shared_records", lambda d: d)  # the loader as it was: dicts as they are
    copied = _worker_growth_mb(tool, dicts)
    table_mb = records.nbytes / 2**20  # at most this much of the memory-mapped table is newly mapped
    info = (shared, copied, table_mb)
    assert all(total < table_mb / 2 + 1 and anon < 1 for total, anon in shared), info  # measured: ~0.02 MB
    assert all(anon > 3 for _, anon in copied), info  # measured: 7-8 MB each
    # plain lists handed to the loader now are serialised first: flat too
    monkeypatch.undo()
    assert all(total < 1 and anon < 1 for total, anon in _worker_growth_mb(tool, dicts)), "serialised list"
