"""Training and test data loaders.

The training stream is deterministic and resumable: the sampler draws a global sequence of
(dataset index, sample seed) pairs from ``SEED``, each rank takes every world-size-th pair, and the
augmentations of a sample are seeded by its own seed. So the samples and their augmentations do
not depend on the number of workers or ranks, and a run resumed at iteration k continues the very
stream it left: the sampler jumps to sample k * IMS_PER_BATCH (its epoch's order is drawn from that
epoch's own seed, so no earlier epoch or sample is drawn again).

Records reach the loader's workers as arrays, never as a list of Python dicts (a forked worker
that reads a Python object copies its page, so over millions of dicts every worker would grow
into a private copy of the list): image-caption sources are record tables already
(:mod:`ovss_d2.data.record_table`), other lists are serialised as detectron2 does
(``DatasetFromList(serialize=True)``: one pickled byte buffer and its offsets).
"""
import logging
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetFromList, build_detection_test_loader
from detectron2.utils import comm
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .io import UnreadableImageError
from .record_table import ConcatRecords, RecordTable

logger = logging.getLogger(__name__)


def sample_seed(seed: int, position: int) -> int:
    """Seed of the sample at ``position`` of the global training stream."""
    return (seed * 1_000_003 + position * 7_919 + 12_345) % (2**31 - 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffled order of ``epoch`` (epoch 0: ``seed`` itself, as before epochs had
    their own seeds, so a first epoch is the same stream as in older versions)."""
    return (seed + epoch * 1_000_003) % (2**63 - 1)


class SeededTrainingSampler(Sampler):
    """Infinite shuffled stream of ``(index, sample_seed)`` for this rank.

    The global stream is epoch after epoch of ``torch.randperm(size)`` drawn from
    :func:`epoch_seed`; the sample at global position p has seed ``sample_seed(seed, p)``, and rank
    r of w takes positions ``start + r``, ``start + r + w``, ... An epoch's order is one int64
    tensor (8 bytes a sample) turned into Python ints a chunk at a time; starting at ``start``
    draws only the order of its epoch.

    Args:
        size: dataset length.
        seed: base seed (shared by all ranks).
        start: samples of the global stream already consumed (resume).
        shuffle: reshuffle every epoch.
    """

    CHUNK = 4096  # indices turned into Python ints at a time

    def __init__(self, size: int, seed: int, start: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("The training dataset is empty.")
        self.size, self.seed, self.start, self.shuffle = size, seed, start, shuffle
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(size,) int64: the dataset indices of ``epoch`` in stream order."""
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        position, step = self.start + self.rank, self.world_size
        while True:
            epoch, offset = divmod(position, self.size)
            mine = self.epoch_order(epoch)[offset::step]  # this rank's positions in this epoch
            for c in range(0, len(mine), self.CHUNK):
                for j, idx in enumerate(mine[c:c + self.CHUNK].tolist(), c):
                    yield idx, sample_seed(self.seed, position + j * step)
            position += len(mine) * step


def seed_torch(seed: int) -> None:
    """``torch.manual_seed`` for a data worker: the CPU generator, and CUDA's only once CUDA is in
    use (the same CPU state; ``torch.manual_seed`` also visits every device backend, which costs
    ~0.2 ms a sample, more than reading a record)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


class SeededMapDataset(Dataset):
    """Applies ``mapper`` to ``dataset[index]`` with every RNG seeded by the sample's seed.
    An unreadable file is reported with its path and replaced by the next sample."""

    def __init__(self, dataset: Sequence[Dict], mapper: Callable[[Dict], Dict], max_skips: int = 10):
        self.dataset, self.mapper, self.max_skips = dataset, mapper, max_skips

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Dict:
        idx, seed = key
        last_error = None
        for _ in range(self.max_skips + 1):
            random.seed(seed)
            np.random.seed(seed)
            seed_torch(seed)
            try:
                return self.mapper(self.dataset[idx])
            except UnreadableImageError as e:
                logger.error(f"Skipping unreadable training sample: {e}")
                last_error = e
                idx = (idx + 1) % len(self.dataset)
        raise RuntimeError(f"{self.max_skips + 1} unreadable training samples in a row; last: {last_error}")


def _list_collate(batch: List[Dict]) -> List[Dict]:
    return batch


def get_dataset_dicts(names: Sequence[str]) -> Sequence[Dict]:
    """The records of the datasets ``names`` one after the other (each keeps its own ``image_id``);
    record tables are not copied."""
    parts = []
    for name in names:
        d = DatasetCatalog.get(name)
        if len(d) == 0:
            raise ValueError(f"Dataset {name!r} is empty.")
        parts.append(d)
    return parts[0] if len(parts) == 1 else ConcatRecords(parts)


def shared_records(dicts: Sequence[Dict]) -> Sequence[Dict]:
    """``dicts`` in a form forked loader workers share without copying: record tables as they are,
    lists serialised (detectron2's ``DatasetFromList(serialize=True)``); indexing gives new dicts."""
    if isinstance(dicts, ConcatRecords):
        return ConcatRecords([shared_records(p) for p in dicts.parts])
    if isinstance(dicts, (RecordTable, DatasetFromList)):
        return dicts
    return DatasetFromList(list(dicts), copy=False, serialize=True)


def build_train_loader(cfg, mapper: Callable[[Dict], Dict], start_iter: int = 0,
                       dataset_dicts: Optional[Sequence[Dict]] = None) -> DataLoader:
    """Per-rank batches (lists of mapped dicts) of SOLVER.IMS_PER_BATCH // world_size images.
    ``dataset_dicts`` (default: DATASETS.TRAIN's records) is shared with the workers as
    :func:`shared_records` does."""
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by the {world_size} processes.")
    dicts = shared_records(dataset_dicts if dataset_dicts is not None else get_dataset_dicts(cfg.DATASETS.TRAIN))
    # every rank must draw the same global stream: a random seed is agreed on across ranks
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = SeededTrainingSampler(len(dicts), seed, start=start_iter * total)
    batch_sampler = BatchSampler(sampler, total // world_size, drop_last=True)
    return DataLoader(SeededMapDataset(dicts, mapper), batch_sampler=batch_sampler,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_list_collate)


def build_test_loader(cfg, dataset_name: str, mapper: Callable[[Dict], Dict]):
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
