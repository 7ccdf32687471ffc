#!/usr/bin/env python
"""Each paper's ablation table on ToyWorld: train and evaluate every row with two seeds, judge each of the
paper's claimed effects by a tie rule, and write one table per group beside the paper's numbers.

    python tools/toyworld_ablations.py [--groups vilseg_table2,...] [--rows vil_seg,...] [--seeds 1,2]
                                       [--output-dir output/toyworld_ablations] [--force] [--dry-run]
                                       [--report-only]

Groups (``--groups``; every row of a group is run unless ``--rows`` picks some):

- ``vilseg_table2``: ViL-Seg's Table 2 (w/o L_vision, K-means trained without the head, the full
  model) and Table 1's "CLIP + Seg" (the same toy model and budget trained with the cross-modal loss
  alone, evaluated densely, MaskCLIP-style, by ``CLIPDenseBaseline`` on its weights);
- ``vilseg_fig5``: ViL-Seg's Fig. 5, clusters 10 / 25 / 40;
- ``zeroseg_table3`` / ``zeroseg_table4`` / ``zeroseg_table5``: ZeroSeg's grid sets, distillation
  losses and mask ratios, overrides of ``configs/toy/zeroseg_toy.yaml`` (the switches of
  ``configs/zeroseg/ablations/``), on ``toyworld_objects_val`` with GroupViT's sliding windows
  scaled to ToyWorld (``tools/toyworld_table.py``'s ``slide_128``) and on ``toyworld_val``;
- ``sed_cer`` / ``err_seg_crm``: inference-only rows on the trained toy SED / ERR-Seg
  (early rejection k off / 8 / 1; CRM N 8 / 16 / 32 / off) on ``toyworld_wide_val``: mIoU and the
  model's whole forward time per image (detectron2's "pure compute time": the decoder is not timed
  alone).

A *model* (config + overrides + seed) is trained once into ``<output-dir>/models/<model>/seed<S>``
and shared by the rows that evaluate it; a row with its own evaluation (other weights reader,
other inference switches) is evaluated into ``<output-dir>/evals/<model>/<digest>/seed<S>``. A
finished training or evaluation (its metrics and its time file on disk) is reused unless
``--force``; an interrupted one is run again from the start. Every row's first seed is run before
any second seed. Seeds: ``SEED 1`` and ``SEED 2`` (ours; any two seeds other than the toy configs'
42, whose runs are MODEL_ZOO.md's ToyWorld table). ``--report-only`` writes the tables from the cache alone.

Tie rule (the issue's): an effect "A beats B" counts only when the difference of the two rows'
seed means exceeds the larger of the two rows' seed spreads (max - min over the seeds); otherwise
it is a tie. Each claim of a paper is then "reproduced", "tie" or "reversed" (a claim "no loss",
such as early rejection keeping mIoU, is reproduced unless the row is measurably worse).

Training speed (Table 5): the iterations / second that detectron2 logs depend on what else the
machine runs while a row trains, so the claim is judged on ``step_times.json`` instead: one training
step (forward + backward of the losses, the config's batch, teacher features given as the cache
gives them) of each mask-ratio model, the models interleaved step by step in one process, so that
they share whatever load there is; two rounds stand for the two seeds.

Outputs: ``ablations.md``, ``ablations.csv`` (one line per row and seed, and the mean),
``ablations.json``; the total time of the command is printed.
"""
import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from toyworld_table import (SLIDE_WINDOWS, build_teacher_cache, print_command, read_metrics,  # noqa: E402
                            run_train_net)

VIL = "configs/toy/vil_seg_toy.yaml"
ZS = "configs/toy/zeroseg_toy.yaml"
OBJECTS, VAL, WIDE = "toyworld_objects_val", "toyworld_val", "toyworld_wide_val"
DEFAULT_SEEDS = (1, 2)


@dataclass
class Model:
    """A trained model: ``train_net.py --config-file config`` with ``opts`` (and ``SEED``)."""
    config: str
    opts: Tuple[str, ...] = ()
    # trained from a teacher-feature cache (tools/cache_teacher_features.py), one per grid set, built
    # first into <output-dir>/teacher/<grids> and shared by every model with those grids
    teacher_cache: bool = False


@dataclass
class Row:
    """One row of a group: the model it evaluates, an optional evaluation of its own (``eval_config``
    with ``eval_opts`` and ``MODEL.WEIGHTS`` = the model's final checkpoint) and the paper's number."""
    key: str
    group: str
    label: str
    model: str
    paper: str
    eval_config: Optional[str] = None
    eval_opts: Tuple[str, ...] = ()


@dataclass
class Group:
    """Columns are (header, source, dataset, metric): source "row" reads the row's own evaluation if
    it has one (else the model's), "train" the model's own evaluation, "time" the training seconds
    per iteration (detectron2's "Overall training speed"), "infer" the evaluation's milliseconds per
    image. Claims are (row A, relation, row B, column header) with relation ">" (A beats B), "<" (A
    lower than B: times) or ">=" (no loss)."""
    title: str
    paper_header: str
    columns: List[Tuple[str, str, Optional[str], str]]
    claims: List[Tuple[str, str, str, str]] = field(default_factory=list)
    note: str = ""


VIL_COLUMNS = [("val mIoU", "row", VAL, "mIoU"), ("val seen", "row", VAL, "mIoU-seen"),
               ("val unseen", "row", VAL, "mIoU-unseen"), ("val pACC", "row", VAL, "pACC"),
               ("wide mIoU", "row", WIDE, "mIoU"), ("wide unseen", "row", WIDE, "mIoU-unseen")]
_SLIDE_WINDOW, _SLIDE_STRIDE, _ = SLIDE_WINDOWS["slide_128"]
ZS_SLIDE = ("MODEL.ZEROSEG.TEST_MODE", "slide", "MODEL.ZEROSEG.TEST_CROP_SIZE", str(_SLIDE_WINDOW),
            "MODEL.ZEROSEG.TEST_STRIDE", str(_SLIDE_STRIDE), "DATASETS.TEST", f"('{OBJECTS}',)")
ZS_COLUMNS = [("objects mIoU (windows)", "row", OBJECTS, "mIoU"), ("objects mIoU (whole)", "train", OBJECTS, "mIoU"),
              ("val mIoU", "train", VAL, "mIoU"), ("val unseen", "train", VAL, "mIoU-unseen")]
WIDE_ONLY = ("DATASETS.TEST", f"('{WIDE}',)")
INFER_COLUMNS = [("wide mIoU", "row", WIDE, "mIoU"), ("wide unseen", "row", WIDE, "mIoU-unseen"),
                 ("ms / image", "infer", WIDE, "ms")]

MODELS: Dict[str, Model] = {
    "vil_seg": Model(VIL),
    "vil_seg_no_vision": Model(VIL, ("MODEL.VIL_SEG.VISION_LOSS_WEIGHT", "0.0")),
    "vil_seg_kmeans": Model("configs/toy/vil_seg_toy_kmeans.yaml"),
    # "CLIP + Seg": the cross-modal loss alone (no L_vision; CLUSTERING kmeans builds no head and
    # computes no L_cluster), the same model, captions, views and schedule as ViL-Seg.
    "clip_seg": Model(VIL, ("MODEL.VIL_SEG.VISION_LOSS_WEIGHT", "0.0", "MODEL.VIL_SEG.CLUSTERING", "kmeans")),
    # Sec. 4.3's reading of the head ("can learn to improve the quality of visual embeddings")
    "vil_seg_enc": Model(VIL, ("MODEL.VIL_SEG.CLUSTER_GRAD_TO_ENCODER", "True")),
    "vil_seg_c10": Model(VIL, ("MODEL.VIL_SEG.NUM_CLUSTERS", "10")),
    "vil_seg_c40": Model(VIL, ("MODEL.VIL_SEG.NUM_CLUSTERS", "40")),
    "zs_grids_1": Model(ZS, ("MODEL.ZEROSEG.GRIDS", "[1]"), True),
    "zs_grids_1_2": Model(ZS, ("MODEL.ZEROSEG.GRIDS", "[1, 2]"), True),
    "zs_grids_1_3": Model(ZS, ("MODEL.ZEROSEG.GRIDS", "[1, 3]"), True),
    "zs_all": Model(ZS, (), True),
    "zs_multiscale": Model(ZS, ("MODEL.ZEROSEG.MATCHING_WEIGHT", "0.0"), True),
    "zs_matching": Model(ZS, ("MODEL.ZEROSEG.DISTILL_GRIDS", "[1]"), True),
    "zs_all_nearest": Model(ZS, ("MODEL.ZEROSEG.MATCHING", "nearest"), True),
    "zs_mask_0": Model(ZS, ("MODEL.ZEROSEG.MASK_RATIO", "0.0"), True),
    "zs_mask_08": Model(ZS, ("MODEL.ZEROSEG.MASK_RATIO", "0.8"), True),
    "sed": Model("configs/toy/sed_toy.yaml"),
    "err_seg": Model("configs/toy/err_seg_toy.yaml"),
}

# The CLIP dense baseline reading a ViL-Seg checkpoint: the toy ViT's weights, ViL-Seg's prompt and
# test size (its head and vision projection, absent here, are unused keys).
CLIP_SEG_EVAL = ("MODEL.CLIP.NAME", "ovss-tiny-vit-96", "MODEL.CLIP.PRETRAINED", "none",
                 "MODEL.WEIGHTS_STRICT", "False", "MODEL.TEXT.CUSTOM_TEMPLATES", "['a {}.']",
                 "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
                 "MODEL.CHANNELS_LAST", "False", "DATASETS.TEST", f"('{VAL}', '{WIDE}')")

ROWS: List[Row] = [
    Row("vil_seg_no_vision", "vilseg_table2", "ViL-Seg w/o L_vision", "vil_seg_no_vision", "22.05"),
    Row("vil_seg_kmeans", "vilseg_table2", "Offline (K-means), trained without head and L_cluster", "vil_seg_kmeans",
        "30.97"),
    Row("vil_seg", "vilseg_table2", "ViL-Seg (configs/toy/vil_seg_toy.yaml)", "vil_seg", "33.61 (Table 1: 34.42)"),
    Row("clip_seg", "vilseg_table2", "CLIP + Seg: cross-modal loss only, dense (MaskCLIP-style)", "clip_seg",
        "27.40 (Table 1)", "configs/toy/clip_baseline_toy.yaml", CLIP_SEG_EVAL),
    # a diagnostic, no claim: the full model's encoder read densely as CLIP + Seg is, without clustering
    Row("vil_seg_dense", "vilseg_table2", "(diagnostic) ViL-Seg's weights, dense as CLIP + Seg", "vil_seg", "-",
        "configs/toy/clip_baseline_toy.yaml", CLIP_SEG_EVAL),
    Row("vil_seg_enc", "vilseg_table2", "ViL-Seg, L_cluster also into the encoder (Sec. 4.3's reading)",
        "vil_seg_enc", "-"),
    Row("vil_seg_c10", "vilseg_fig5", "C = 10", "vil_seg_c10", "below C = 20 / 25 (values in the figure only)"),
    Row("vil_seg_c25", "vilseg_fig5", "C = 25 (the toy config)", "vil_seg", "among the best (C = 20 / 25)"),
    Row("vil_seg_c40", "vilseg_fig5", "C = 40", "vil_seg_c40", "largest tried (C = 35) below C = 20 / 25"),
    Row("zs_t3_1", "zeroseg_table3", "1x1", "zs_grids_1", "21.1", ZS, ZS_SLIDE),
    Row("zs_t3_1_2", "zeroseg_table3", "1x1 + 2x2", "zs_grids_1_2", "23.7", ZS, ZS_SLIDE),
    Row("zs_t3_1_3", "zeroseg_table3", "1x1 + 3x3", "zs_grids_1_3", "40.2", ZS, ZS_SLIDE),
    Row("zs_t3_all", "zeroseg_table3", "all grids (1x1 ... 4x4)", "zs_all", "40.8", ZS, ZS_SLIDE),
    Row("zs_t4_base", "zeroseg_table4", "Base (1x1 distilled to z)", "zs_grids_1", "21.1", ZS, ZS_SLIDE),
    Row("zs_t4_ms", "zeroseg_table4", "Base + multi-scale", "zs_multiscale", "28.5", ZS, ZS_SLIDE),
    Row("zs_t4_sm", "zeroseg_table4", "Base + segment matching (toy's coverage matching)", "zs_matching", "38.6",
        ZS, ZS_SLIDE),
    Row("zs_t4_full", "zeroseg_table4", "Base + multi-scale + matching (toy's coverage matching)", "zs_all", "40.8",
        ZS, ZS_SLIDE),
    Row("zs_t4_full_nearest", "zeroseg_table4", "Base + multi-scale + matching (paper's nearest matching)",
        "zs_all_nearest", "40.8", ZS, ZS_SLIDE),
    Row("zs_t5_0", "zeroseg_table5", "mask ratio 0", "zs_mask_0", "35.6 (speed-up 0 %)", ZS, ZS_SLIDE),
    Row("zs_t5_06", "zeroseg_table5", "mask ratio 0.6", "zs_all", "40.8 (speed-up 36 %)", ZS, ZS_SLIDE),
    Row("zs_t5_08", "zeroseg_table5", "mask ratio 0.8", "zs_mask_08", "32.8 (speed-up 43 %)", ZS, ZS_SLIDE),
    Row("sed_cer_off", "sed_cer", "early rejection off", "sed", "A-150 31.8, 177.7 ms",
        "configs/toy/sed_toy.yaml", ("MODEL.SED.EARLY_REJECTION_TOPK", "0") + WIDE_ONLY),
    Row("sed_cer_8", "sed_cer", "k = 8 (the config's)", "sed", "A-150 31.6, 82.4 ms",
        "configs/toy/sed_toy.yaml", ("MODEL.SED.EARLY_REJECTION_TOPK", "8") + WIDE_ONLY),
    Row("sed_cer_1", "sed_cer", "k = 1", "sed", "A-150 29.9, 51.3 ms",
        "configs/toy/sed_toy.yaml", ("MODEL.SED.EARLY_REJECTION_TOPK", "1") + WIDE_ONLY),
] + [Row(f"err_seg_crm_{n or 'off'}", "err_seg_crm", f"CRM N = {n}" if n else "CRM off (every class)", "err_seg",
         "Table XIII: saturates as N grows (values lost in our text of the paper)", "configs/toy/err_seg_toy.yaml",
         ("MODEL.ERR_SEG.CRM_TEST", str(n)) + WIDE_ONLY) for n in (8, 16, 32, 0)]
ROW_BY_KEY = {r.key: r for r in ROWS}

_UNSEEN, _WIN, _VAL, _STEP = "val unseen", "objects mIoU (windows)", "val mIoU", "ms / step (side by side)"
GROUPS: Dict[str, Group] = {
    "vilseg_table2": Group(
        "ViL-Seg, Table 2 and Table 1's CLIP + Seg", "paper (VOC mIoU)", VIL_COLUMNS,
        [("vil_seg", ">", "vil_seg_no_vision", _UNSEEN), ("vil_seg", ">", "vil_seg_kmeans", _UNSEEN),
         ("vil_seg", ">", "clip_seg", _UNSEEN), ("vil_seg", ">", "vil_seg_no_vision", "val mIoU"),
         ("vil_seg", ">", "vil_seg_kmeans", "val mIoU"), ("vil_seg", ">", "clip_seg", "val mIoU"),
         ("vil_seg_enc", ">", "vil_seg_kmeans", _UNSEEN), ("vil_seg_enc", ">", "vil_seg_kmeans", "val mIoU")],
        "Rows marked (diagnostic) and the Sec. 4.3 reading are ours, not rows of the paper's tables."),
    "vilseg_fig5": Group("ViL-Seg, Fig. 5 (cluster number C)", "paper (Fig. 5, VOC)", VIL_COLUMNS,
                         [("vil_seg_c25", ">", "vil_seg_c10", _UNSEEN), ("vil_seg_c25", ">", "vil_seg_c40", _UNSEEN)]),
    "zeroseg_table3": Group(
        "ZeroSeg, Table 3 (grids of the multi-scale features)", "paper (VOC mIoU)", ZS_COLUMNS,
        [(a, ">", "zs_t3_1", col) for col in (_WIN, _VAL) for a in ("zs_t3_all", "zs_t3_1_3", "zs_t3_1_2")]),
    "zeroseg_table4": Group(
        "ZeroSeg, Table 4 (distillation losses)", "paper (VOC mIoU)", ZS_COLUMNS,
        [claim for col in (_WIN, _VAL) for claim in (
            ("zs_t4_ms", ">", "zs_t4_base", col), ("zs_t4_sm", ">", "zs_t4_base", col),
            ("zs_t4_full", ">", "zs_t4_ms", col), ("zs_t4_full_nearest", ">", "zs_t4_ms", col))]),
    "zeroseg_table5": Group(
        "ZeroSeg, Table 5 (mask ratio)", "paper (VOC mIoU, speed-up over ratio 0)",
        ZS_COLUMNS + [("train s / it", "time", None, "s_per_it"), (_STEP, "step", None, "ms")],
        [("zs_t5_06", ">", "zs_t5_0", _WIN), ("zs_t5_06", ">", "zs_t5_08", _WIN),
         ("zs_t5_06", ">", "zs_t5_0", _VAL), ("zs_t5_06", ">", "zs_t5_08", _VAL),
         ("zs_t5_06", "<", "zs_t5_0", _STEP), ("zs_t5_08", "<", "zs_t5_06", _STEP)],
        "train s / it: detectron2's logged speed, under whatever else ran on the machine; ms / step: "
        "the three models timed side by side (step_times.json), the column the speed claims use."),
    "sed_cer": Group("SED, Table 7 (category early rejection), inference only", "paper (A-150 mIoU, time)",
                     INFER_COLUMNS,
                     [("sed_cer_8", ">=", "sed_cer_off", "wide mIoU"), ("sed_cer_8", "<", "sed_cer_off", "ms / image"),
                      ("sed_cer_1", "<", "sed_cer_8", "ms / image")],
                     "Times: the whole model's forward per image (detectron2's pure compute time), not the decoder "
                     "alone; measured on a shared machine unless the load average says otherwise."),
    "err_seg_crm": Group("ERR-Seg, CRM classes kept at inference (N), inference only", "paper", INFER_COLUMNS,
                         [("err_seg_crm_32", ">=", "err_seg_crm_off", "wide mIoU"),
                          ("err_seg_crm_8", "<", "err_seg_crm_off", "ms / image")],
                         "Times as for SED: whole forward per image."),
}


# ---- the tie rule -------------------------------------------------------------------------------
def compare(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Seed values of rows A and B -> the difference of their means, the larger of their seed spreads
    (max - min) and the sign of the effect: +1 (A higher), -1 (B higher), 0 (a tie: the difference does
    not exceed the spread). Needs at least two seeds per row (one seed has no spread)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the tie rule needs two seeds per row (got {len(a)} and {len(b)})")
    diff = sum(a) / len(a) - sum(b) / len(b)
    spread = max(max(a) - min(a), max(b) - min(b))
    return {"diff": diff, "spread": spread, "sign": (diff > 0) - (diff < 0) if abs(diff) > spread else 0}


def verdict(relation: str, sign: int) -> str:
    """A paper's claim (">": A beats B, "<": A below B, ">=": A no worse) against a measured sign."""
    if relation == ">=":
        return "reproduced" if sign >= 0 else "reversed"
    want = 1 if relation == ">" else -1
    return "reproduced" if sign == want else ("tie" if sign == 0 else "reversed")


# ---- running ------------------------------------------------------------------------------------
def model_dir(out: str, model: str, seed: int) -> str:
    return os.path.join(out, "models", model, f"seed{seed}")


def row_dir(out: str, row: Row, seed: int) -> str:
    """Where a row's metrics are: its model's folder, or for a row with its own evaluation
    ``evals/<model>/<evaluation>/seed<S>``, the evaluation named by a digest of its config and
    overrides, so that rows evaluating one model the same way (e.g. ZeroSeg's full model in Tables 3,
    4 and 5) share one run."""
    if not row.eval_config:
        return model_dir(out, row.model, seed)
    digest = hashlib.sha1(json.dumps([row.eval_config, list(row.eval_opts)]).encode()).hexdigest()[:10]
    return os.path.join(out, "evals", row.model, digest, f"seed{seed}")


def evaluated(path: str, datasets: Sequence[str]) -> bool:
    return all(os.path.isfile(os.path.join(path, "inference", d, "sem_seg_evaluation.json")) for d in datasets)


def load_cfg(config: str, opts: Sequence[str]):
    from ovss_d2.engine import load_config

    return load_config(os.path.join(REPO, config), list(opts))


def model_datasets(config: str, opts: Sequence[str]) -> Tuple[str, ...]:
    """The DATASETS.TEST a config (with overrides) evaluates at the end of training / --eval-only."""
    return tuple(load_cfg(config, opts).DATASETS.TEST)


def ensure_teacher_cache(out: str, m: Model, dry_run: bool) -> List[str]:
    """A ZeroSeg model's teacher-feature cache for its grids (built unless complete; the script resumes a
    partial one and checks a finished one) -> the overrides that train from it. The toy mapper's centre
    crop is deterministic, so the cached views are the ones the teacher would compute on the fly."""
    grids = list(load_cfg(m.config, m.opts).MODEL.ZEROSEG.GRIDS)
    root = os.path.join(out, "teacher", "grids_" + "_".join(map(str, grids)))
    opts = ["MODEL.ZEROSEG.TEACHER_CACHE", root]
    if root in _HANDLED or os.path.isfile(os.path.join(root, "index.json")):
        return opts
    _HANDLED.add(root)
    if dry_run:
        print_command([sys.executable, "tools/cache_teacher_features.py", "--config-file", m.config] + list(m.opts)
                      + opts)
        return opts
    seconds = build_teacher_cache(m.config, list(m.opts) + opts, root + ".log")
    print(f"  teacher cache for grids {grids}: {seconds:.0f} s", flush=True)
    return opts


def parse_inference_ms(log_path: str, datasets: Sequence[str]) -> Dict[str, float]:
    """detectron2's "Total inference pure compute time ... (X s / iter" lines of a train_net log, one per
    dataset in the order of DATASETS.TEST (batch 1: one image per iteration) -> {dataset: ms per image}."""
    with open(log_path) as f:
        seconds = [float(m.group(1)) for m in re.finditer(r"pure compute time: \S+ \(([\d.]+) s / iter", f.read())]
    if len(seconds) != len(datasets):
        raise ValueError(f"{log_path}: {len(seconds)} inference-time lines for the {len(datasets)} datasets "
                         f"{list(datasets)}; see the log for the evaluation that did not finish")
    return {d: 1000 * s for d, s in zip(datasets, seconds)}


# Paths trained, evaluated or listed by this invocation: a model or evaluation shared by several rows
# is run (or, with --force, rerun; with --dry-run, listed) once.
_HANDLED = set()


def ensure_model(out: str, key: str, seed: int, force: bool, dry_run: bool) -> str:
    """Train (and evaluate on its config's DATASETS.TEST) one model for one seed unless done."""
    m = MODELS[key]
    path = model_dir(out, key, seed)
    opts = list(m.opts) + ["SEED", str(seed)]
    timing = os.path.join(path, "ablation_time.json")
    if path in _HANDLED or not force and os.path.isfile(timing) and evaluated(path, model_datasets(m.config, opts)):
        return path
    _HANDLED.add(path)
    if m.teacher_cache:
        opts += ensure_teacher_cache(out, m, dry_run)
    if dry_run:
        print_command([sys.executable, "train_net.py", "--config-file", m.config, "OUTPUT_DIR", path] + opts)
        return path
    log = os.path.join(path, "train_net.log")
    seconds = run_train_net(m.config, path, True, log, desc=f"  {key} seed {seed}", opts=opts)
    with open(log) as f:  # detectron2's own training speed: the iterations alone, no evaluation
        speed = re.findall(r"Overall training speed: .*\(([\d.]+) s / it\)", f.read())
    with open(timing, "w") as f:
        json.dump({"seconds": seconds, "s_per_it": float(speed[-1]) if speed else None}, f)
    return path


def ensure_row_eval(out: str, row: Row, seed: int, force: bool, dry_run: bool) -> str:
    """A row's own --eval-only run on its model's final checkpoint unless done; its inference times
    (ms / image per dataset) go to inference_ms.json."""
    path = row_dir(out, row, seed)
    weights = os.path.join(model_dir(out, row.model, seed), "model_final.pth")
    opts = ["MODEL.WEIGHTS", weights] + list(row.eval_opts)
    times = os.path.join(path, "inference_ms.json")
    done = os.path.isfile(times) and evaluated(path, model_datasets(row.eval_config, opts))
    if path in _HANDLED or done and not force:
        return path
    _HANDLED.add(path)
    if dry_run:
        print_command([sys.executable, "train_net.py", "--config-file", row.eval_config, "--eval-only",
                       "OUTPUT_DIR", path] + opts)
        return path
    log = os.path.join(path, "eval.log")
    run_train_net(row.eval_config, path, False, log, opts=opts)
    ms = parse_inference_ms(log, model_datasets(row.eval_config, opts))
    with open(times, "w") as f:
        json.dump(ms, f)
    return path


STEP_TIMES = "step_times.json"
STEP_MODELS = ("zs_mask_0", "zs_all", "zs_mask_08")


def measure_step_times(models: Sequence[str], rounds: int, steps: int = 20, warmup: int = 3) -> Dict:
    """Median milliseconds of one ZeroSeg training step per model and round: forward + backward of
    the losses on the config's batch of random images with random unit teacher features attached
    (as the cache attaches them: the teacher does not run), the models interleaved step by step
    (the order rotating) so that they share the machine's load. {"ms": {round: {model: ms}}, ...}."""
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    built, batches = {}, {}
    for key in models:
        m = MODELS[key]
        cfg = load_cfg(m.config, list(m.opts) + ["MODEL.CLIP.PRETRAINED", "none"])
        torch.manual_seed(0)
        built[key] = build_model(cfg).train()
        z, size = cfg.MODEL.ZEROSEG, cfg.MODEL.ZEROSEG.IMAGE_SIZE
        views = sum(g * g for g in z.GRIDS)
        teacher = torch.nn.functional.normalize(torch.randn(cfg.SOLVER.IMS_PER_BATCH, views,
                                                            built[key].clip.embed_dim), dim=-1)
        batches[key] = [{"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8),
                         "teacher_features": t} for t in teacher]
    ms = {}
    for r in range(1, rounds + 1):
        times = {k: [] for k in models}
        for step in range(warmup + steps):
            order = list(models[step % len(models):]) + list(models[:step % len(models)])
            for key in order:
                start = time.perf_counter()
                sum(built[key](batches[key]).values()).backward()
                built[key].zero_grad(set_to_none=True)
                if step >= warmup:
                    times[key].append(1000 * (time.perf_counter() - start))
        ms[str(r)] = {k: float(np.median(v)) for k, v in times.items()}
        print(f"  step times, round {r}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in ms[str(r)].items()), flush=True)
    return {"ms": ms, "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()}


def ensure_step_times(out: str, seeds: Sequence[int], force: bool, dry_run: bool) -> None:
    path = os.path.join(out, STEP_TIMES)
    if dry_run or os.path.isfile(path) and not force:
        return
    result = measure_step_times(STEP_MODELS, rounds=len(seeds))
    result["ms"] = {str(s): result["ms"][str(i + 1)] for i, s in enumerate(seeds)}
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def read_value(out: str, row: Row, seed: int, column: Tuple[str, str, Optional[str], str]) -> Optional[float]:
    """One cell of one seed (None when not measured yet)."""
    _, source, dataset, metric = column
    if source == "step":
        path = os.path.join(out, STEP_TIMES)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)["ms"].get(str(seed), {}).get(row.model)
    if source == "time":
        path = os.path.join(model_dir(out, row.model, seed), "ablation_time.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f).get("s_per_it")
    if source == "infer":
        path = os.path.join(row_dir(out, row, seed), "inference_ms.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f).get(dataset)
    path = model_dir(out, row.model, seed) if source == "train" else row_dir(out, row, seed)
    if not evaluated(path, [dataset]):
        return None
    return read_metrics(path, dataset).get(metric)


# ---- the report ---------------------------------------------------------------------------------
def seed_values(out: str, row: Row, column, seeds: Sequence[int]) -> Dict[int, float]:
    values = {s: read_value(out, row, s, column) for s in seeds}
    return {s: v for s, v in values.items() if v is not None}


def format_cell(values: Dict[int, float], digits: int = 1) -> str:
    """"mean (seed 1, seed 2)", "x (seed S only)" or "-" when not measured."""
    if not values:
        return "-"
    if len(values) == 1:
        (s, v), = values.items()
        return f"{v:.{digits}f} (seed {s} only)"
    mean = sum(values.values()) / len(values)
    return f"{mean:.{digits}f} (" + ", ".join(f"{v:.{digits}f}" for v in values.values()) + ")"


def judge(out: str, group: Group, seeds: Sequence[int]) -> List[Dict]:
    """Every claim of a group against the measured seeds: the comparison and its verdict, or
    "not measured" when a row lacks two seeds."""
    columns = {c[0]: c for c in group.columns}
    results = []
    for a, relation, b, header in group.claims:
        va = seed_values(out, ROW_BY_KEY[a], columns[header], seeds)
        vb = seed_values(out, ROW_BY_KEY[b], columns[header], seeds)
        claim = {"a": a, "relation": relation, "b": b, "column": header}
        if len(va) < 2 or len(vb) < 2:
            results.append({**claim, "verdict": "not measured"})
            continue
        c = compare(list(va.values()), list(vb.values()))
        results.append({**claim, **c, "verdict": verdict(relation, c["sign"])})
    return results


def group_report(out: str, key: str, seeds: Sequence[int]) -> Tuple[List[str], Dict, List[Row]]:
    """Markdown lines, JSON content and the rows without every seed measured, for one group."""
    group = GROUPS[key]
    rows = [r for r in ROWS if r.group == key]
    heads = ["row", group.paper_header] + [c[0] for c in group.columns]
    lines = [f"### {group.title}", "", "| " + " | ".join(heads) + " |",
             "|" + "|".join([" --- ", " --- "] + [" ---: "] * len(group.columns)) + "|"]
    data, missing = {"title": group.title, "rows": {}}, []
    for r in rows:
        values = {c[0]: seed_values(out, r, c, seeds) for c in group.columns}
        if any(len(v) < len(seeds) for v in values.values()):
            missing.append(r)
        lines.append("| " + " | ".join([r.label, r.paper] + [format_cell(values[c[0]], 2 if c[1] == "time" else 1)
                                                             for c in group.columns]) + " |")
        data["rows"][r.key] = {"label": r.label, "paper": r.paper, "model": r.model, "values": values}
    claims = judge(out, group, seeds)
    data["claims"] = claims
    lines.append("")
    for c in claims:
        what = f"{ROW_BY_KEY[c['a']].label} {c['relation']} {ROW_BY_KEY[c['b']].label} ({c['column']})"
        if c["verdict"] == "not measured":
            lines.append(f"- {what}: not measured yet (two seeds of both rows needed)")
        else:
            lines.append(f"- {what}: difference of means {c['diff']:+.3g}, larger seed spread {c['spread']:.3g} "
                         f"-> **{c['verdict']}**")
    if group.note:
        lines.append(f"- {group.note}")
    return lines + [""], data, missing


def write_report(out: str, groups: Sequence[str], seeds: Sequence[int], seconds: float) -> Dict:
    """ablations.md / .csv / .json in ``out`` for the given groups, from whatever is on disk."""
    lines = [f"Cells: mean over seeds {', '.join(map(str, seeds))} (the seeds' values in brackets). An effect counts "
             "only when the difference of the means exceeds the larger of the two rows' seed spreads; else a tie.", ""]
    report, missing = {"seeds": list(seeds), "groups": {}}, []
    for g in groups:
        g_lines, g_data, g_missing = group_report(out, g, seeds)
        lines += g_lines
        report["groups"][g] = g_data
        missing += g_missing
    if missing:
        lines.append("Rows not (fully) measured yet: " + ", ".join(r.key for r in missing) + ". Run them with "
                     "`python tools/toyworld_ablations.py --rows " + ",".join(r.key for r in missing) + "` (finished "
                     "models and evaluations are reused from the cache).")
    report["not_measured"] = [r.key for r in missing]
    report["seconds"] = seconds
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ablations.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "ablations.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "ablations.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "row", "label", "paper", "column", "seed", "value"])
        for g, g_data in report["groups"].items():
            for key, r in g_data["rows"].items():
                for column, values in r["values"].items():
                    for seed, v in values.items():
                        w.writerow([g, key, r["label"], r["paper"], column, seed, f"{v:.4f}"])
                    if values:
                        w.writerow([g, key, r["label"], r["paper"], column, "mean",
                                    f"{sum(values.values()) / len(values):.4f}"])
    print("\n".join(lines))
    return report


def prepare_data() -> None:
    """ToyWorld and the tiny CLIP (both cached after their first build)."""
    from ovss_d2.toyworld import generate, tiny_clip

    print("[ToyWorld]", generate(), flush=True)
    print("[tiny CLIP]", tiny_clip.train_tiny_clip(), flush=True)


def split_names(parser: argparse.ArgumentParser, option: str, text: Optional[str], known) -> List[str]:
    """A comma-separated option -> its names, every one of them in ``known`` (else a usage error)."""
    names = [k.strip() for k in (text or "").split(",") if k.strip()]
    unknown = [k for k in names if k not in known]
    if unknown:
        parser.error(f"{option}: unknown {unknown}; choose from {list(known)}")
    return names


def select_rows(parser: argparse.ArgumentParser, groups: Optional[str], rows: Optional[str]) -> List[Row]:
    """The rows of ``--groups`` (default all) narrowed to ``--rows`` when given."""
    chosen = list(ROWS)
    if groups:
        names = split_names(parser, "--groups", groups, GROUPS)
        chosen = [r for r in chosen if r.group in names]
    if rows:
        names = split_names(parser, "--rows", rows, ROW_BY_KEY)
        chosen = [r for r in chosen if r.key in names]
    return chosen


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", help=f"comma-separated, from {list(GROUPS)} (default: all)")
    parser.add_argument("--rows", help="comma-separated row keys (default: every row of the groups)")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated SEED values")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "toyworld_ablations"))
    parser.add_argument("--force", action="store_true", help="train and evaluate again rows that have results")
    parser.add_argument("--dry-run", action="store_true", help="list the commands that would run, run none")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from what is on disk, train and evaluate nothing")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers, e.g. --seeds 1,2")
    if len(seeds) < 2:
        parser.error("--seeds: the tie rule needs at least two seeds")
    rows = select_rows(parser, args.groups, args.rows)
    _HANDLED.clear()
    start = time.time()
    if not (args.dry_run or args.report_only):
        prepare_data()
    # seed by seed: the first seed of every row is measured before any second seed is trained
    for seed in [] if args.report_only else seeds:
        for row in rows:
            print(f"[{row.group}] {row.label}, seed {seed}", flush=True)
            ensure_model(args.output_dir, row.model, seed, args.force, args.dry_run)
            if row.eval_config:
                ensure_row_eval(args.output_dir, row, seed, args.force, args.dry_run)
    if not args.report_only and any(r.group == "zeroseg_table5" for r in rows):
        print("[zeroseg_table5] training step times, the mask ratios side by side", flush=True)
        ensure_step_times(args.output_dir, seeds, args.force, args.dry_run)
    if args.dry_run:
        return {}
    groups = [g for g in GROUPS if any(r.group == g for r in rows)]
    seconds = time.time() - start
    report = write_report(args.output_dir, groups, seeds, seconds)
    print(f"written: {os.path.join(args.output_dir, 'ablations.md')} (+ .csv, .json); "
          f"total time {seconds / 60:.1f} min")
    return report


if __name__ == "__main__":
    main()
