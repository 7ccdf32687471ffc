"""Precomputing ZeroSeg's teacher features for a dataset (``tools/cache_teacher_features.py``)."""
import logging
from typing import Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from torch.utils.data import DataLoader

from ..data.center_crop_mapper import CenterCropImageMapper
from ..data.io import UnreadableImageError
from ..data.teacher_cache import cache_description, finalize, teacher_name, teacher_view_size, write_shards
from ..modeling.clip import CLIPWrapper
from ..modeling.distillation import num_views, teacher_view_features
from ..modeling.meta_arch.base import normalize_images

logger = logging.getLogger(__name__)


class _CroppedImages(torch.utils.data.Dataset):
    """(image (3, S, S) uint8, readable) of each record, cropped as in training; an unreadable
    image is reported and gives zeros (training skips it anyway)."""

    def __init__(self, records, size: int):
        self.records, self.mapper = records, CenterCropImageMapper(is_train=True, size=size)
        self.size = size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        try:
            return self.mapper(self.records[i])["image"], True
        except UnreadableImageError as e:
            logger.error(f"Teacher cache: skipping unreadable image ({e}); its features are zeros.")
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False


def build_teacher_cache(cfg, output: str, dataset: Optional[str] = None, shard_size: int = 1024,
                        batch_size: int = 64, max_shards: Optional[int] = None, progress: bool = True) -> bool:
    """Compute this process's missing shards of the teacher-feature cache of ``dataset`` (default:
    DATASETS.TRAIN[0]) into ``output``; in multi-process runs every rank takes every world-size-th
    shard. Returns whether the cache is complete (``index.json`` written)."""
    z = cfg.MODEL.ZEROSEG
    dataset = dataset or cfg.DATASETS.TRAIN[0]
    records = DatasetCatalog.get(dataset)
    device = torch.device(cfg.MODEL.DEVICE if torch.cuda.is_available() else "cpu")
    clip = CLIPWrapper.from_config(cfg).to(device).eval()
    grids, size = list(z.GRIDS), teacher_view_size(cfg)
    mean, std = (torch.tensor(v, device=device) for v in (clip.pixel_mean, clip.pixel_std))

    def compute(part):
        loader = DataLoader(_CroppedImages(part, cfg.INPUT.CENTER_CROP_SIZE), batch_size=batch_size,
                            num_workers=cfg.DATALOADER.NUM_WORKERS)
        feats = []
        for images, readable in loader:
            x = normalize_images(images.to(device), mean, std)
            f = teacher_view_features(clip, x, grids, size) * readable.to(device).view(-1, 1, 1)
            feats.append(f.cpu().numpy())
        return np.concatenate(feats)

    written = write_shards(output, records, compute, shard_size, comm.get_rank(), comm.get_world_size(),
                           max_shards=max_shards, progress=progress)
    logger.info(f"Teacher cache {output}: rank {comm.get_rank()} wrote shards {written} "
                f"({num_views(grids)} views per image)")
    comm.synchronize()
    if comm.is_main_process():
        files = [r["file_name"] for r in records]
        return finalize(output, cache_description(teacher_name(cfg), grids, size, files, shard_size,
                                                  cfg.INPUT.CENTER_CROP_SIZE))
    return True
