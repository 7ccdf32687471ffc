"""Training and test data loaders.

The training stream is deterministic and resumable: the sampler draws a global sequence of
(dataset index, sample seed) pairs from ``SEED``, each rank takes every world-size-th pair, and the
augmentations of a sample are seeded by its own seed. So the samples and their augmentations do
not depend on the number of workers or ranks, and a run resumed at iteration k continues the very
stream it left (the sampler skips the k * IMS_PER_BATCH samples already seen).
"""
import itertools
import logging
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils import comm
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .io import UnreadableImageError

logger = logging.getLogger(__name__)


def sample_seed(seed: int, position: int) -> int:
    """Seed of the sample at ``position`` of the global training stream."""
    return (seed * 1_000_003 + position * 7_919 + 12_345) % (2**31 - 1)


class SeededTrainingSampler(Sampler):
    """Infinite shuffled stream of ``(index, sample_seed)`` for this rank.

    Args:
        size: dataset length.
        seed: base seed (shared by all ranks).
        start: samples of the global stream already consumed (resume).
        shuffle: reshuffle every epoch.
    """

    def __init__(self, size: int, seed: int, start: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("The training dataset is empty.")
        self.size, self.seed, self.start, self.shuffle = size, seed, start, shuffle
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()

    def _global_stream(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        position = 0
        while True:
            order = torch.randperm(self.size, generator=g).tolist() if self.shuffle else range(self.size)
            for idx in order:
                yield idx, sample_seed(self.seed, position)
                position += 1

    def __iter__(self):
        yield from itertools.islice(self._global_stream(), self.start + self.rank, None, self.world_size)


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
            torch.manual_seed(seed)
            try:
                return self.mapper(self.dataset[idx])
            except UnreadableImageError as e:
                logger.error(f"Skipping unreadable training sample: {e}")
                last_error = e
                idx = (idx + 1) % len(self.dataset)
        raise RuntimeError(f"{self.max_skips + 1} unreadable training samples in a row; last: {last_error}")


def _list_collate(batch: List[Dict]) -> List[Dict]:
    return batch


def get_dataset_dicts(names: Sequence[str]) -> List[Dict]:
    dicts = []
    for name in names:
        d = DatasetCatalog.get(name)
        if len(d) == 0:
            raise ValueError(f"Dataset {name!r} is empty.")
        dicts.extend(d)
    return dicts


def build_train_loader(cfg, mapper: Callable[[Dict], Dict], start_iter: int = 0,
                       dataset_dicts: Optional[List[Dict]] = None) -> DataLoader:
    """Per-rank batches (lists of mapped dicts) of SOLVER.IMS_PER_BATCH // world_size images."""
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by the {world_size} processes.")
    dicts = dataset_dicts if dataset_dicts is not None else get_dataset_dicts(cfg.DATASETS.TRAIN)
    # every rank must draw the same global stream: a random seed is agreed on across ranks
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = SeededTrainingSampler(len(dicts), seed, start=start_iter * total)
    batch_sampler = BatchSampler(sampler, total // world_size, drop_last=True)
    return DataLoader(SeededMapDataset(dicts, mapper), batch_sampler=batch_sampler,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_list_collate)


def build_test_loader(cfg, dataset_name: str, mapper: Callable[[Dict], Dict]):
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
