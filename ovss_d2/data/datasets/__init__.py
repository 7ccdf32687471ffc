from .register import register_sem_seg_dataset

__all__ = ["register_sem_seg_dataset"]
