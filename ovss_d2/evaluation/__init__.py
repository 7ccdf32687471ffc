from .sem_seg_evaluation import OpenVocabSemSegEvaluator, metrics_from_confusion

__all__ = ["OpenVocabSemSegEvaluator", "metrics_from_confusion"]
