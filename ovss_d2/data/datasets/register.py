"""Registering semantic-segmentation datasets (a folder of images and a folder of label maps),
checking at start-up that a registered dataset is there and completely prepared, and the one entry
point of the built-in datasets: each source (the benchmarks, ToyWorld) adds the function that
registers its datasets with :func:`add_builtin_datasets`; ``import ovss_d2`` then calls
:func:`register_builtin_datasets` once."""
import json
import os
from typing import Callable, Dict, Optional, Sequence, Set

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg


class DatasetNotReadyError(FileNotFoundError):
    """A registered dataset is missing or half-prepared (the message names the path and the fix)."""


_builtin_sources: Dict[str, Callable[[], object]] = {}  # source name -> registers its datasets (default roots)
_builtin_registered: Set[str] = set()  # the sources whose datasets are registered in this process
_builtin_started = False  # register_builtin_datasets has run: sources added later register at once


def add_builtin_datasets(source: str, register: Callable[[], object]) -> None:
    """Add a source of built-in datasets: ``register()`` registers all of them under their default
    roots. They are registered by :func:`register_builtin_datasets`, or at once if it has run."""
    _builtin_sources[source] = register
    if _builtin_started:
        register_builtin_datasets()


def register_builtin_datasets() -> None:
    """Register the datasets of every source added with :func:`add_builtin_datasets`, each source
    once per process (``import ovss_d2`` calls it)."""
    global _builtin_started
    _builtin_started = True
    for source, register in list(_builtin_sources.items()):
        if source not in _builtin_registered:
            register()
            _builtin_registered.add(source)


def register_sem_seg_dataset(name: str, image_root: str, gt_root: str, class_names: Sequence[str], *,
                             ignore_label: int = 255, image_ext: str = ".jpg", gt_ext: str = ".png",
                             unseen_classes: Optional[Sequence[str]] = None, evaluator_type: str = "sem_seg",
                             exclude: Sequence[str] = (), prepare_hint: str = "", prepare_marker: str = "",
                             **metadata) -> None:
    """Register ``name`` with detectron2.

    Images ``image_root/<stem><image_ext>`` are paired with labels ``gt_root/<stem><gt_ext>``
    (labels hold contiguous class ids, ``ignore_label`` elsewhere; 16-bit PNG for > 255 classes).
    ``unseen_classes`` (a subset of ``class_names``) makes the evaluator report seen / unseen mIoU.
    ``exclude``: file stems left out of the split although their label maps are in ``gt_root``
    (a protocol's image list that omits images of the official release).
    ``prepare_hint`` is the command that prepares the data (shown when it is missing);
    ``prepare_marker`` the completion marker a prepare script writes (``datasets/prepare_*.py``:
    ``<gt_root>/prepared.json``), checked by :func:`verify_sem_seg_dataset`.
    """
    names = list(class_names)
    if unseen_classes:
        missing = [c for c in unseen_classes if c not in names]
        if missing:
            raise ValueError(f"unseen_classes of {name!r} not among its class names: {missing}")

    def load():
        for root in (image_root, gt_root):
            if not os.path.isdir(root):
                hint = f" Prepare it with: {prepare_hint}" if prepare_hint else " See datasets/README.md."
                raise FileNotFoundError(f"Dataset {name!r}: directory {root} does not exist.{hint}")
        dicts = load_sem_seg(gt_root, image_root, gt_ext=gt_ext, image_ext=image_ext)
        left_out = set(exclude)
        return [d for d in dicts if os.path.basename(d["file_name"])[: -len(image_ext)] not in left_out]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=names, image_root=image_root, sem_seg_root=gt_root, ignore_label=ignore_label,
        evaluator_type=evaluator_type, unseen_classes=list(unseen_classes or []), image_ext=image_ext,
        gt_ext=gt_ext, excluded_images=list(exclude), prepare_hint=prepare_hint, prepare_marker=prepare_marker,
        **metadata,
    )


def verify_sem_seg_dataset(name: str) -> None:
    """Raise :class:`DatasetNotReadyError` unless the registered folder dataset ``name`` is usable:
    both folders exist, the labels are there (as many as its prepare script recorded in its
    completion marker, for the class count and ignore label registered), and every label map has
    its image. Datasets registered otherwise (no ``sem_seg_root`` metadata) are not checked.
    Runs in milliseconds to a second (it lists the two folders)."""
    meta = MetadataCatalog.get(name)
    image_root, gt_root = getattr(meta, "image_root", None), getattr(meta, "sem_seg_root", None)
    if not image_root or not gt_root:
        return
    hint = getattr(meta, "prepare_hint", "")
    fix = f"Prepare it with:\n    {hint}" if hint else "See datasets/README.md."
    for what, root in (("image", image_root), ("label", gt_root)):
        if not os.path.isdir(root):
            raise DatasetNotReadyError(f"Dataset {name!r}: {what} directory {root} does not exist. {fix}")
    gt_ext, image_ext = getattr(meta, "gt_ext", ".png"), getattr(meta, "image_ext", ".jpg")
    labels = [f[: -len(gt_ext)] for f in os.listdir(gt_root) if f.endswith(gt_ext)]
    if not labels:
        raise DatasetNotReadyError(f"Dataset {name!r}: no label maps (*{gt_ext}) in {gt_root}. {fix}")
    marker = getattr(meta, "prepare_marker", "")
    if marker:
        if not os.path.isfile(marker):
            raise DatasetNotReadyError(
                f"Dataset {name!r} is not completely prepared: {marker} is missing (the preparation never ran "
                f"or was interrupted; {len(labels)} label maps are in {gt_root}). Run it (again; finished files are "
                f"kept):\n    {hint}")
        with open(marker) as f:
            info = json.load(f)
        problems = []
        if info.get("files") != len(labels):
            problems.append(f"{gt_root} holds {len(labels)} label maps, the preparation wrote {info.get('files')}")
        if "num_classes" in info and info["num_classes"] != len(meta.stuff_classes):
            problems.append(f"labels prepared for {info['num_classes']} classes, registered with "
                            f"{len(meta.stuff_classes)}")
        if "ignore_label" in info and info["ignore_label"] != meta.ignore_label:
            problems.append(f"labels prepared with ignore label {info['ignore_label']}, registered with "
                            f"{meta.ignore_label}")
        if problems:
            raise DatasetNotReadyError(f"Dataset {name!r} does not match its preparation ({marker}): "
                                       f"{'; '.join(problems)}. Prepare it again:\n    {hint} --overwrite")
    images = {f[: -len(image_ext)] for f in os.listdir(image_root) if f.endswith(image_ext)}
    orphans = sorted(set(labels) - images)
    if orphans:
        shown = ", ".join(orphans[:3]) + (f" and {len(orphans) - 3} more" if len(orphans) > 3 else "")
        raise DatasetNotReadyError(
            f"Dataset {name!r}: {len(orphans)} of {len(labels)} label maps in {gt_root} have no image "
            f"(<stem>{image_ext}) in {image_root}: {shown}. {fix}")
