from . import datasets  # noqa: F401  (adds the benchmarks to the built-in datasets)
from .build import SeededTrainingSampler, build_test_loader, build_train_loader
from .center_crop_mapper import CenterCropImageMapper
from .dataset_mapper import DATASET_MAPPER_REGISTRY, SemSegDatasetMapper, build_train_mapper
from .datasets import register_sem_seg_dataset
from .image_caption import read_caption_image, register_image_caption_dataset
from .image_caption_mapper import MultiCropCaptionMapper
from .image_folder import register_image_folder
from .io import UnreadableImageError, read_image_rgb, read_label, save_label

__all__ = [
    "SeededTrainingSampler", "build_train_loader", "build_test_loader", "SemSegDatasetMapper",
    "CenterCropImageMapper", "register_image_folder",
    "MultiCropCaptionMapper", "register_image_caption_dataset", "read_caption_image",
    "DATASET_MAPPER_REGISTRY", "build_train_mapper",
    "register_sem_seg_dataset", "UnreadableImageError", "read_image_rgb", "read_label", "save_label",
]
