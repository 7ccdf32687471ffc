"""The built-in benchmark datasets, registered at ``import ovss_d2`` under detectron2's dataset root
(``$DETECTRON2_DATASETS``, default ``datasets``; see datasets/README.md for preparing them).

=================================  ============  ====  ==============================================
dataset                            key           N     per-benchmark metadata
=================================  ============  ====  ==============================================
*open-vocabulary protocol* (train on COCO-Stuff, test zero-shot; SED, ERR-Seg, CAT-Seg)
openvocab_coco_stuff_171_train     coco171t      171
openvocab_coco_stuff_171_val       coco171       171
openvocab_ade20k_847_val           a847          847   err_seg_crm_test 48, 16-bit labels (65535 ignore)
openvocab_pcontext_459_val         pc459         459   err_seg_crm_test 48, 16-bit labels (65535 ignore)
openvocab_ade20k_150_val           a150          150   err_seg_crm_test 32
openvocab_pcontext_59_val          pc59          59    err_seg_crm_test 24
openvocab_voc_20_val               pas20         20    err_seg_crm_test 16
*ZeroSeg's annotation-free protocol* (GroupViT's; class 0 is "background", an evaluated class)
voc_21_val                         voc21         21    background_threshold 0.95, background_class 0
pcontext_60_val                    pc60          60    background_threshold 0.05, background_class 0
coco_object_81_val                 coco81        81    background_threshold 0.35, background_class 0
*ViL-Seg's unseen-class protocol* (the zero-shot splits of SPNet / CaGNet)
vilseg_voc_unseen_val              vilseg-voc    20    unseen_classes: 5
vilseg_pcontext_unseen_val         vilseg-pc     59    unseen_classes: 4
vilseg_coco_stuff_unseen_val       vilseg-coco   171   unseen_classes: 15
=================================  ============  ====  ==============================================

ViL-Seg (ECCV 2022, Sec. 4.1) reports mIoU and pixel accuracy on the unseen classes: potted plant,
sheep, sofa, train, tv-monitor of the 20 VOC object classes; cow, motorbike, sofa, cat of the 59
PASCAL-Context classes; 15 COCO-Stuff classes. We evaluate as its compared methods do (generalised
zero-shot): the vocabulary is the whole class set (VOC 20, Context 59, COCO-Stuff 171 = the 182
COCO-Stuff ids that occur; background / unlabeled pixels are ignored), the model names every pixel
with any of those classes, and the evaluator reports ``mIoU-unseen`` and ``pACC-unseen`` (the
paper's Table 1) next to the all-class ``mIoU`` (its Table 2, where every class counts as unseen).
The images and labels are those of the open-vocabulary splits (VOC 2012 val 1449, Context val 5105,
COCO val2017 5000). Since ViL-Seg released no code, its class names are the other lists written
as words, the paper's spelling ("potted plant", "tv monitor", "wall concrete").
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .class_lists import class_names
from .preparation import PREPARED_MARKER, OutputFolder, default_datasets_root
from .register import register_sem_seg_dataset


@dataclass(frozen=True)
class BenchmarkSpec:
    """One registered benchmark split. Paths are relative to the dataset root."""
    name: str
    key: str
    protocol: str
    class_list: str
    image_dir: str
    gt_dir: str
    prepare_script: str
    ignore_label: int = 255
    image_ext: str = ".jpg"
    gt_ext: str = ".png"
    unseen_classes: Tuple[str, ...] = ()
    rename: Optional[str] = None  # "words": the ViL-Seg spelling of the class names
    settings: Dict[str, object] = field(default_factory=dict)

    def class_names(self) -> List[str]:
        names = class_names(self.class_list)
        return [words(n) for n in names] if self.rename == "words" else names

    def prepare_command(self, root: str) -> str:
        return f"python {self.prepare_script} --root {root}"

    def gt_root(self, root: str) -> str:
        return os.path.join(root, self.gt_dir)

    def output_folder(self, root: str) -> OutputFolder:
        """The label folder a prepare script fills for this benchmark, with what its marker records."""
        return OutputFolder(self.gt_root(root), {"num_classes": len(self.class_names()),
                                                 "ignore_label": self.ignore_label}, count_ext=self.gt_ext)


# Concatenated names of the VOC / Context lists, written as words (ViL-Seg's spelling).
_WORDS = {"pottedplant": "potted plant", "tvmonitor": "tv monitor", "diningtable": "dining table"}


def words(name: str) -> str:
    """'pottedplant' -> 'potted plant', 'wall-concrete' -> 'wall concrete'."""
    return _WORDS.get(name, name.replace("-", " "))


_VOC, _PC, _COCO, _ADE = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010", "coco-stuff", "ADE20K_2021_17_01"
_OV, _ZS, _VS = "open-vocabulary", "zeroseg", "vilseg"

BENCHMARKS: Tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec("openvocab_coco_stuff_171_train", "coco171t", _OV, "coco_stuff_171", f"{_COCO}/images/train2017",
                  f"{_COCO}/annotations_detectron2/train2017", "datasets/prepare_coco_stuff.py"),
    BenchmarkSpec("openvocab_coco_stuff_171_val", "coco171", _OV, "coco_stuff_171", f"{_COCO}/images/val2017",
                  f"{_COCO}/annotations_detectron2/val2017", "datasets/prepare_coco_stuff.py"),
    BenchmarkSpec("openvocab_ade20k_847_val", "a847", _OV, "ade20k_847", f"{_ADE}/images_detectron2/validation",
                  f"{_ADE}/annotations_detectron2/validation", "datasets/prepare_ade20k_847.py",
                  ignore_label=65535, settings={"err_seg_crm_test": 48}),
    BenchmarkSpec("openvocab_pcontext_459_val", "pc459", _OV, "pascal_context_459", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc459_val", "datasets/prepare_pascal_context.py",
                  ignore_label=65535, settings={"err_seg_crm_test": 48}),
    BenchmarkSpec("openvocab_ade20k_150_val", "a150", _OV, "ade20k_150", "ADEChallengeData2016/images/validation",
                  "ADEChallengeData2016/annotations_detectron2/validation", "datasets/prepare_ade20k_150.py",
                  settings={"err_seg_crm_test": 32}),
    BenchmarkSpec("openvocab_pcontext_59_val", "pc59", _OV, "pascal_context_59", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc59_val", "datasets/prepare_pascal_context.py",
                  settings={"err_seg_crm_test": 24}),
    BenchmarkSpec("openvocab_voc_20_val", "pas20", _OV, "voc_20", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/voc20_val", "datasets/prepare_voc.py",
                  settings={"err_seg_crm_test": 16}),
    BenchmarkSpec("voc_21_val", "voc21", _ZS, "voc_21", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/voc21_val", "datasets/prepare_voc.py",
                  settings={"background_threshold": 0.95, "background_class": 0}),
    BenchmarkSpec("pcontext_60_val", "pc60", _ZS, "pascal_context_60", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc60_val", "datasets/prepare_pascal_context.py",
                  settings={"background_threshold": 0.05, "background_class": 0}),
    BenchmarkSpec("coco_object_81_val", "coco81", _ZS, "coco_object_81", f"{_COCO}/images/val2017",
                  f"{_COCO}/annotations_object_detectron2/val2017", "datasets/prepare_coco_object.py",
                  settings={"background_threshold": 0.35, "background_class": 0}),
    BenchmarkSpec("vilseg_voc_unseen_val", "vilseg-voc", _VS, "voc_20", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/voc20_val", "datasets/prepare_voc.py", rename="words",
                  unseen_classes=("potted plant", "sheep", "sofa", "train", "tv monitor")),
    BenchmarkSpec("vilseg_pcontext_unseen_val", "vilseg-pc", _VS, "pascal_context_59", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc59_val", "datasets/prepare_pascal_context.py", rename="words",
                  unseen_classes=("cow", "motorbike", "sofa", "cat")),
    BenchmarkSpec("vilseg_coco_stuff_unseen_val", "vilseg-coco", _VS, "coco_stuff_171", f"{_COCO}/images/val2017",
                  f"{_COCO}/annotations_detectron2/val2017", "datasets/prepare_coco_stuff.py", rename="words",
                  unseen_classes=("frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase", "giraffe",
                                  "cow", "road", "wall concrete", "tree", "grass", "river", "clouds", "playingfield")),
)

BENCHMARKS_BY_NAME: Dict[str, BenchmarkSpec] = {b.name: b for b in BENCHMARKS}
BENCHMARKS_BY_KEY: Dict[str, BenchmarkSpec] = {b.key: b for b in BENCHMARKS}

# Named groups for tools/evaluate_benchmarks.py, in the papers' table order.
BENCHMARK_GROUPS: Dict[str, Tuple[str, ...]] = {
    "openvocab": ("a847", "pc459", "a150", "pc59", "pas20"),
    "zeroseg": ("voc21", "pc60", "coco81"),
    "vilseg": ("vilseg-voc", "vilseg-pc", "vilseg-coco"),
}
BENCHMARK_GROUPS["all"] = tuple(k for g in ("openvocab", "zeroseg", "vilseg") for k in BENCHMARK_GROUPS[g])


def resolve_benchmarks(keys: Sequence[str]) -> List[BenchmarkSpec]:
    """Benchmark keys (``a150``), dataset names (``openvocab_ade20k_150_val``) or groups
    (``openvocab``, ``zeroseg``, ``vilseg``, ``all``) -> specs, in the given order, without repeats."""
    out: List[BenchmarkSpec] = []
    for k in keys:
        if k in BENCHMARK_GROUPS:
            specs = [BENCHMARKS_BY_KEY[x] for x in BENCHMARK_GROUPS[k]]
        elif k in BENCHMARKS_BY_KEY:
            specs = [BENCHMARKS_BY_KEY[k]]
        elif k in BENCHMARKS_BY_NAME:
            specs = [BENCHMARKS_BY_NAME[k]]
        else:
            raise KeyError(f"Unknown benchmark {k!r}. Keys: {', '.join(BENCHMARKS_BY_KEY)}; groups: "
                           f"{', '.join(BENCHMARK_GROUPS)}; or a dataset name ({', '.join(BENCHMARKS_BY_NAME)}).")
        out.extend(s for s in specs if s not in out)
    return out


def register_benchmark(spec: BenchmarkSpec, root: Optional[str] = None) -> None:
    """(Re-)register one benchmark under ``root`` (default: ``$DETECTRON2_DATASETS`` or ``datasets``)."""
    root = default_datasets_root() if root is None else root
    if spec.name in DatasetCatalog.list():
        DatasetCatalog.remove(spec.name)
        MetadataCatalog.remove(spec.name)
    gt_root = spec.gt_root(root)
    register_sem_seg_dataset(
        spec.name, os.path.join(root, spec.image_dir), gt_root, spec.class_names(),
        ignore_label=spec.ignore_label, image_ext=spec.image_ext, gt_ext=spec.gt_ext,
        unseen_classes=list(spec.unseen_classes) or None, prepare_hint=spec.prepare_command(root),
        prepare_marker=os.path.join(gt_root, PREPARED_MARKER), benchmark_key=spec.key, protocol=spec.protocol,
        **spec.settings,
    )


def register_all_benchmarks(root: Optional[str] = None) -> List[str]:
    """(Re-)register every built-in benchmark under ``root``; returns their names. Call it after
    changing ``$DETECTRON2_DATASETS`` in a running process (import registers under the value then)."""
    for spec in BENCHMARKS:
        register_benchmark(spec, root)
    return [b.name for b in BENCHMARKS]
