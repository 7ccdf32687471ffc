"""Miniature copies of the official benchmark downloads, in their raw formats and folder layouts
(palette / grey / RGB-encoded PNGs, PASCAL-Context .mat files, the ADE20K index pickle), for the
prepare-script tests. Each writer returns the raw label arrays it wrote so
that tests can derive the expected output independently of the scripts."""
import importlib.util
import os
import pickle

import numpy as np
from PIL import Image

import ovss_d2  # noqa: F401  (compat shims before detectron2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VOC_PALETTE = []
for _i in range(256):  # the VOC colour map (bit interleaving of the index)
    _r = _g = _b = 0
    _c = _i
    for _j in range(8):
        _r |= ((_c >> 0) & 1) << (7 - _j)
        _g |= ((_c >> 1) & 1) << (7 - _j)
        _b |= ((_c >> 2) & 1) << (7 - _j)
        _c >>= 3
    VOC_PALETTE += [_r, _g, _b]


def load_prepare_script(name: str):
    """The module datasets/<name>.py (its ``main(argv)`` runs the script in this process)."""
    spec = importlib.util.spec_from_file_location(f"_{name}", os.path.join(REPO, "datasets", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jpeg(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def _blocks(values, h, w, seed):
    """(h, w) map tiled with 4x4 blocks of ``values`` in a random order (every value occurs)."""
    rng = np.random.default_rng(seed)
    reps = int(np.ceil(h * w / 16 / len(values))) + 1
    cells = rng.permutation(np.repeat(np.asarray(values), reps))[: (h // 4) * (w // 4)]
    cells[: len(values)] = values
    return np.kron(cells.reshape(h // 4, w // 4), np.ones((4, 4), cells.dtype))


def write_voc2012(root, ids=("2007_000032", "2007_000039"), values=(0, 1, 5, 15, 20, 255), extra_image="2007_000099"):
    """VOCdevkit/VOC2012 with palette-PNG SegmentationClass and ImageSets/Segmentation/val.txt."""
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    os.makedirs(os.path.join(voc, "SegmentationClass"), exist_ok=True)
    os.makedirs(os.path.join(voc, "ImageSets", "Segmentation"), exist_ok=True)
    labels = {}
    for k, i in enumerate(ids):
        lab = _blocks(values, 20, 28, k).astype(np.uint8)
        img = Image.fromarray(lab, mode="P")
        img.putpalette(VOC_PALETTE)
        img.save(os.path.join(voc, "SegmentationClass", f"{i}.png"))
        _jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), 20, 28, k)
        labels[i] = lab
    _jpeg(os.path.join(voc, "JPEGImages", f"{extra_image}.jpg"), 20, 28)  # a train image: not converted
    with open(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return labels


def write_ade20k_150(root, n=2, values=(0, 1, 13, 150)):
    """ADEChallengeData2016 with grey annotation PNGs (0 = other, 1..150)."""
    ade = os.path.join(root, "ADEChallengeData2016")
    os.makedirs(os.path.join(ade, "annotations", "validation"), exist_ok=True)
    labels = {}
    for k in range(n):
        stem = f"ADE_val_{k + 1:08d}"
        lab = _blocks(values, 16, 24, k).astype(np.uint8)
        Image.fromarray(lab).save(os.path.join(ade, "annotations", "validation", f"{stem}.png"))
        _jpeg(os.path.join(ade, "images", "validation", f"{stem}.jpg"), 16, 24, k)
        labels[stem] = lab
    return labels


def write_coco_stuff(root, values=(0, 12, 89, 91, 181, 255), splits=("val2017",)):
    """coco-stuff/images/<split> and the stuffthingmaps grey PNGs in coco-stuff/annotations/<split>."""
    coco = os.path.join(root, "coco-stuff")
    labels = {}
    for s, split in enumerate(splits):
        os.makedirs(os.path.join(coco, "annotations", split), exist_ok=True)
        for k in range(2):
            stem = f"{k + 1 + 1000 * s:012d}"
            lab = _blocks(values, 16, 20, k + s).astype(np.uint8)
            Image.fromarray(lab).save(os.path.join(coco, "annotations", split, f"{stem}.png"))
            _jpeg(os.path.join(coco, "images", split, f"{stem}.jpg"), 16, 20, k)
            labels[(split, stem)] = lab
    return labels


def ade_seg_png(class_mask, instances):
    """The RGB encoding of the full ADE20K release: R / 10 * 256 + G = class, B = instance."""
    seg = np.zeros(class_mask.shape + (3,), np.uint8)
    seg[..., 0] = (class_mask // 256) * 10
    seg[..., 1] = class_mask % 256
    seg[..., 2] = instances
    return seg


def write_ade20k_full(root, sizes=((20, 24), (520, 528)), values=(0, 7, 2978, 312, 1857, 2315, 3148)):
    """ADE20K_2021_17_01 with the index pickle, images and *_seg.png in scene folders; the index
    also lists a training image (not converted). Raw class masks are returned per validation stem."""
    base = "ADE20K_2021_17_01"
    folders, filenames, masks = [], [], {}
    for k, (h, w) in enumerate(sizes):
        folder = f"{base}/images/ADE/validation/{'abbey' if k == 0 else 'street'}"
        name = f"ADE_val_{k + 1:08d}.jpg"
        mask = _blocks(values, h, w, k).astype(np.int32)
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        _jpeg(os.path.join(root, folder, name), h, w, k)
        inst = np.random.default_rng(k).integers(0, 255, (h, w), dtype=np.uint8)
        Image.fromarray(ade_seg_png(mask, inst)).save(os.path.join(root, folder, name[:-4] + "_seg.png"))
        folders.append(folder)
        filenames.append(name)
        masks[name[:-4]] = mask
    train_folder = f"{base}/images/ADE/training/urban/street"
    folders.append(train_folder)
    filenames.append("ADE_train_00000001.jpg")
    os.makedirs(os.path.join(root, train_folder), exist_ok=True)
    _jpeg(os.path.join(root, train_folder, "ADE_train_00000001.jpg"), 12, 12)
    index = {"folder": np.array(folders, dtype=object), "filename": filenames,
             "objectnames": ["-"] * 3688, "scene": ["abbey", "street", "street"]}
    with open(os.path.join(root, base, "index_ade20k.pkl"), "wb") as f:
        pickle.dump(index, f)
    return masks


def write_pascal_context(root, ids=("2008_000002", "2010_001606", "2010_006086"),
                         values=(0, 1, 2, 65, 284, 397, 458, 459)):
    """VOCdevkit/VOC2010 (JPEGImages, ImageSets/Main/val.txt) and trainval/<id>.mat (LabelMap); the
    default ids include 2010_001606, the val image the methods' 5104-image list leaves out."""
    import scipy.io

    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    os.makedirs(os.path.join(voc, "trainval"), exist_ok=True)
    os.makedirs(os.path.join(voc, "ImageSets", "Main"), exist_ok=True)
    maps = {}
    for k, i in enumerate(ids):
        lab = _blocks(values, 16, 20, k).astype(np.uint16)
        scipy.io.savemat(os.path.join(voc, "trainval", f"{i}.mat"), {"LabelMap": lab})
        _jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), 16, 20, k)
        maps[i] = lab
    with open(os.path.join(voc, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return maps


def snapshot(root):
    """{relative path: (size, mtime_ns, bytes)} of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, fh.read())
    return out
