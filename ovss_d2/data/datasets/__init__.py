"""Dataset registration: any image + label folder (:func:`register_sem_seg_dataset`) and the
built-in benchmarks (:mod:`.benchmarks`, registered on import under ``$DETECTRON2_DATASETS``)."""
from .benchmarks import (BENCHMARK_GROUPS, BENCHMARKS, BENCHMARKS_BY_KEY, BENCHMARKS_BY_NAME, BenchmarkSpec,
                         register_all_benchmarks, register_benchmark, resolve_benchmarks)
from .class_lists import ClassList, class_names, load_class_list
from .register import (DatasetNotReadyError, add_builtin_datasets, register_builtin_datasets, register_sem_seg_dataset,
                       verify_sem_seg_dataset)

add_builtin_datasets("benchmarks", register_all_benchmarks)  # registered by `import ovss_d2`

__all__ = [
    "register_sem_seg_dataset", "verify_sem_seg_dataset", "DatasetNotReadyError", "add_builtin_datasets",
    "register_builtin_datasets",
    "BenchmarkSpec", "BENCHMARKS", "BENCHMARKS_BY_KEY", "BENCHMARKS_BY_NAME", "BENCHMARK_GROUPS",
    "register_benchmark", "register_all_benchmarks", "resolve_benchmarks",
    "ClassList", "load_class_list", "class_names",
]
