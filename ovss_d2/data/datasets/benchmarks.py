"""The built-in benchmark datasets, registered at ``import ovss_d2`` under detectron2's dataset root
(``$DETECTRON2_DATASETS``, default ``datasets``; see datasets/README.md for preparing them).

=================================  ============  ====  ==============================================
dataset                            key           N     per-benchmark metadata
=================================  ============  ====  ==============================================
*open-vocabulary protocol* (train on COCO-Stuff, test zero-shot; SED, ERR-Seg, CAT-Seg)
openvocab_coco_stuff_171_train     coco171t      171
openvocab_coco_stuff_171_val       coco171       171
openvocab_ade20k_847_val           a847          847   err_seg_crm_test 48, 16-bit labels (65535 ignore)
openvocab_pcontext_459_val         pc459         459   err_seg_crm_test 48, 16-bit labels (65535 ignore); 5104 images
openvocab_ade20k_150_val           a150          150   err_seg_crm_test 32
openvocab_pcontext_59_val          pc59          59    err_seg_crm_test 24; 5104 images
openvocab_voc_20_val               pas20         20    err_seg_crm_test 16
*ZeroSeg's annotation-free protocol* (GroupViT's; class 0 is "background", an evaluated class)
voc_21_val                         voc21         21    background_threshold 0.95, background_class 0
pcontext_60_val                    pc60          60    background_threshold 0.05, background_class 0; 5104 images
coco_object_81_val                 coco81        81    background_threshold 0.35, background_class 0
*ViL-Seg's unseen-class protocol* (the zero-shot splits of SPNet / CaGNet)
vilseg_voc_unseen_val              vilseg-voc    20    unseen_classes: 5
vilseg_pcontext_unseen_val         vilseg-pc     59    unseen_classes: 4; 5105 images
vilseg_coco_stuff_unseen_val       vilseg-coco   182   unseen_classes: 15
=================================  ============  ====  ==============================================

PASCAL-Context: the methods' 5104-image list (``datasets/pascalcontext_val.txt`` of CAT-Seg, SED and
ERR-Seg) is VOC 2010's ``ImageSets/Main/val.txt`` (5105) without ``2010_001606``; the PASCAL-Context
JSON release (``trainval_merged.json``), from which their PC-59 and GroupViT's / mmsegmentation's
PC-60 labels are made, also holds 5104 val images. The prepare script converts all 5105 .mat
files; the registered PC-459 / PC-59 / PC-60 splits leave that image out (:data:`PASCAL_CONTEXT_EXCLUDED`),
ViL-Seg's split keeps it (its paper and CaGNet's test list count 5105).

ViL-Seg (ECCV 2022, Sec. 4.1) reports mIoU and pixel accuracy on the unseen classes of the
zero-shot segmentation setting of SPNet / CaGNet, which it follows: potted plant, sheep, sofa,
train, tv-monitor of the 20 VOC object classes; cow, motorbike, sofa, cat of the 59 PASCAL-Context
classes; 15 COCO-Stuff classes. As in SPNet's and CaGNet's evaluation code (generalised zero-shot)
the vocabulary is the whole class set and background / unlabeled pixels are ignored: VOC 20
classes (1,449 val images), Context 59 (5,105), COCO-Stuff 182 (SPNet's and CaGNet's count: the 0-based
ids 0..181, including the 11 thing ids COCO never annotates; 5,000 val2017 images). The evaluator
reports ``mIoU-unseen`` and ``pACC-unseen`` (the paper's Table 1) next to the all-class ``mIoU``
(its Table 2, where every class counts as unseen). ViL-Seg released no code; its class names are
the lists written as words, the paper's spelling ("potted plant", "tv monitor", "wall concrete").
Sources and the reasons for each choice: datasets/README.md.
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
    exclude: Tuple[str, ...] = ()  # image stems of the prepared folders the protocol's list leaves out
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


# VOC 2010 val images that the PC-459 / PC-59 / PC-60 protocols leave out (see the module docstring).
PASCAL_CONTEXT_EXCLUDED = ("2010_001606",)

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
                  ignore_label=65535, exclude=PASCAL_CONTEXT_EXCLUDED, settings={"err_seg_crm_test": 48}),
    BenchmarkSpec("openvocab_ade20k_150_val", "a150", _OV, "ade20k_150", "ADEChallengeData2016/images/validation",
                  "ADEChallengeData2016/annotations_detectron2/validation", "datasets/prepare_ade20k_150.py",
                  settings={"err_seg_crm_test": 32}),
    BenchmarkSpec("openvocab_pcontext_59_val", "pc59", _OV, "pascal_context_59", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc59_val", "datasets/prepare_pascal_context.py",
                  exclude=PASCAL_CONTEXT_EXCLUDED, settings={"err_seg_crm_test": 24}),
    BenchmarkSpec("openvocab_voc_20_val", "pas20", _OV, "voc_20", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/voc20_val", "datasets/prepare_voc.py",
                  settings={"err_seg_crm_test": 16}),
    BenchmarkSpec("voc_21_val", "voc21", _ZS, "voc_21", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/voc21_val", "datasets/prepare_voc.py",
                  settings={"background_threshold": 0.95, "background_class": 0}),
    BenchmarkSpec("pcontext_60_val", "pc60", _ZS, "pascal_context_60", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc60_val", "datasets/prepare_pascal_context.py",
                  exclude=PASCAL_CONTEXT_EXCLUDED, settings={"background_threshold": 0.05, "background_class": 0}),
    BenchmarkSpec("coco_object_81_val", "coco81", _ZS, "coco_object_81", f"{_COCO}/images/val2017",
                  f"{_COCO}/annotations_detectron2/val2017_object", "datasets/prepare_coco_object.py",
                  settings={"background_threshold": 0.35, "background_class": 0}),
    BenchmarkSpec("vilseg_voc_unseen_val", "vilseg-voc", _VS, "voc_20", f"{_VOC}/JPEGImages",
                  f"{_VOC}/annotations_detectron2/voc20_val", "datasets/prepare_voc.py", rename="words",
                  unseen_classes=("potted plant", "sheep", "sofa", "train", "tv monitor")),
    BenchmarkSpec("vilseg_pcontext_unseen_val", "vilseg-pc", _VS, "pascal_context_59", f"{_PC}/JPEGImages",
                  f"{_PC}/annotations_detectron2/pc59_val", "datasets/prepare_pascal_context.py", rename="words",
                  unseen_classes=("cow", "motorbike", "sofa", "cat")),
    BenchmarkSpec("vilseg_coco_stuff_unseen_val", "vilseg-coco", _VS, "coco_stuff_182", f"{_COCO}/images/val2017",
                  f"{_COCO}/annotations_detectron2/val2017_182", "datasets/prepare_coco_stuff.py", rename="words",
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
        unseen_classes=list(spec.unseen_classes) or None, exclude=spec.exclude, prepare_hint=spec.prepare_command(root),
        prepare_marker=os.path.join(gt_root, PREPARED_MARKER), benchmark_key=spec.key, protocol=spec.protocol,
        **spec.settings,
    )


def register_all_benchmarks(root: Optional[str] = None) -> List[str]:
    """(Re-)register every built-in benchmark under ``root``; returns their names. Call it after
    changing ``$DETECTRON2_DATASETS`` in a running process (import registers under the value then)."""
    for spec in BENCHMARKS:
        register_benchmark(spec, root)
    return [b.name for b in BENCHMARKS]
