"""Image-caption datasets (ViL-Seg's training data), registered the detectron2 way.

Three sources, one record format (``file_name``, ``caption``, ``image_id``):

* a folder of images, each with a caption file of the same stem (``a/b.jpg`` + ``a/b.txt``), as
  img2dataset's ``files`` output format writes them;
* a table of (image, caption) rows: JSON lines (``.jsonl``) or CSV with a header;
* webdataset tar shards as img2dataset's ``webdataset`` output format writes them (how CC12M is
  usually downloaded): ``00000.tar`` holding ``<key>.jpg``, ``<key>.txt``, ``<key>.json``. Shards
  are never unpacked: their headers are read once (an index of member offsets, cached under
  ``$OVSS_D2_CACHE/image_caption_index``) and each image is read straight out of the tar by
  offset. Such records carry ``tar_member``, ``tar_offset`` and ``tar_size`` besides the shard
  path in ``file_name``.

:func:`read_caption_image` reads either kind; a file that cannot be decoded raises
:class:`~ovss_d2.data.io.UnreadableImageError` naming it (the training loader reports and skips it).
"""
import csv
import glob
import hashlib
import io
import json
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image, ImageOps

from .io import UnreadableImageError, read_image_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
IMAGE_COLUMNS = ("image", "file_name", "filepath", "image_path", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt")
INDEX_VERSION = 1


# ---- folders ---------------------------------------------------------------------------------------
def _read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def image_caption_folder_dicts(folder: str) -> List[Dict]:
    """Every image under ``folder`` (recursively, sorted) that has a ``.txt`` caption of the same
    stem; images without one are counted and reported."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image-caption folder {folder} does not exist.")
    records, missing = [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext[1:].lower() not in IMAGE_EXTENSIONS:
                continue
            txt = os.path.join(root, stem + ".txt")
            if not os.path.isfile(txt):
                missing += 1
                continue
            caption = _read_text(txt)
            if not caption:
                missing += 1
                continue
            records.append({"file_name": os.path.join(root, name), "caption": caption, "image_id": len(records)})
    if missing:
        logger.warning(f"{folder}: {missing} images without a (non-empty) .txt caption were left out")
    if not records:
        raise ValueError(f"Image-caption folder {folder} holds no image with a .txt caption of the same name "
                         f"(e.g. 0001.jpg + 0001.txt; images: {', '.join(IMAGE_EXTENSIONS)}).")
    return records


# ---- tables ----------------------------------------------------------------------------------------
def _pick_column(columns: Sequence[str], wanted: Optional[str], candidates: Sequence[str], what: str,
                 path: str) -> str:
    if wanted:
        if wanted not in columns:
            raise ValueError(f"{path}: no {what} column {wanted!r}; its columns are {list(columns)}.")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise ValueError(f"{path}: no {what} column among {list(candidates)}; its columns are {list(columns)}. "
                     f"Name it with the {what}_key argument.")


def image_caption_table_dicts(table: str, image_root: Optional[str] = None, image_key: Optional[str] = None,
                              caption_key: Optional[str] = None) -> List[Dict]:
    """Rows of a ``.jsonl`` / ``.csv`` table of (image path, caption). Relative image paths are
    relative to ``image_root`` (default: the table's folder)."""
    if not os.path.isfile(table):
        raise FileNotFoundError(f"Image-caption table {table} does not exist.")
    image_root = image_root or os.path.dirname(os.path.abspath(table))
    ext = os.path.splitext(table)[1].lower()
    if ext in (".jsonl", ".json"):
        rows = []
        with open(table, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{table}, line {line_no}: not valid JSON ({e}).") from e
    elif ext in (".csv", ".tsv"):
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    else:
        raise ValueError(f"Image-caption table {table}: use .jsonl (one JSON object a line) or .csv / .tsv "
                         "with a header.")
    if not rows:
        raise ValueError(f"Image-caption table {table} is empty.")
    columns = list(rows[0].keys())
    img_col = _pick_column(columns, image_key, IMAGE_COLUMNS, "image", table)
    cap_col = _pick_column(columns, caption_key, CAPTION_COLUMNS, "caption", table)
    records, empty = [], 0
    for row in rows:
        caption = str(row.get(cap_col) or "").strip()
        if not caption or not row.get(img_col):
            empty += 1
            continue
        path = os.path.join(image_root, str(row[img_col]))
        records.append({"file_name": path, "caption": caption, "image_id": len(records)})
    if empty:
        logger.warning(f"{table}: {empty} rows without an image path or caption were left out")
    return records


# ---- webdataset shards -----------------------------------------------------------------------------
def _split_key(member_name: str):
    """webdataset convention: the key is the path up to the first dot of the file name."""
    directory, base = os.path.split(member_name)
    stem, _, ext = base.partition(".")
    return os.path.join(directory, stem) if directory else stem, ext.lower()


def _index_cache_file(shard: str) -> Optional[str]:
    root = os.environ.get("OVSS_D2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ovss_d2"))
    try:
        st = os.stat(shard)
    except OSError:
        return None
    tag = json.dumps([INDEX_VERSION, os.path.abspath(shard), st.st_size, st.st_mtime_ns])
    return os.path.join(root, "image_caption_index", hashlib.sha1(tag.encode()).hexdigest() + ".json")


def scan_tar_shard(shard: str) -> List[Dict]:
    """The samples of one webdataset tar shard, without unpacking it: the tar headers are walked
    once (member data is skipped by seeking), captions come from ``<key>.txt`` (or the ``caption``
    of ``<key>.json``) and each image is located by its data offset and size.

    Returns records ``file_name`` (the shard), ``tar_member``, ``tar_offset``, ``tar_size``,
    ``caption``, ``key``, in shard order. Samples without an image or a caption are reported and
    left out; so is the rest of a truncated or corrupt shard. The index of a shard read to its end
    is cached per (shard path, size, modification time)."""
    cache = _index_cache_file(shard)
    if cache and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            samples = json.load(f)
    else:
        samples, complete = _scan_tar_members(shard)
        if cache and complete:
            try:
                os.makedirs(os.path.dirname(cache), exist_ok=True)
                tmp = f"{cache}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(samples, f)
                os.replace(tmp, cache)
            except OSError as e:  # a read-only cache only costs a rescan
                logger.warning(f"Cannot cache the index of {shard}: {e}")
    return [{"file_name": shard, "tar_member": m, "tar_offset": o, "tar_size": s, "caption": c, "key": k}
            for k, m, o, s, c in samples]


def _scan_tar_members(shard: str):
    """([key, member, offset, size, caption] per sample, whether the whole shard was read)."""
    groups: Dict[str, Dict] = {}
    order: List[str] = []
    complete = True
    try:
        file_size = os.path.getsize(shard)
        with tarfile.open(shard, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_size:
                    raise tarfile.ReadError(f"{member.name} ends after the end of the file")
                key, ext = _split_key(member.name)
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                g = groups[key]
                if ext in IMAGE_EXTENSIONS and "image" not in g:
                    g["image"] = (member.name, member.offset_data, member.size)
                elif ext == "txt":
                    g["txt"] = tar.extractfile(member).read().decode("utf-8", errors="replace").strip()
                elif ext == "json" and member.size < 1 << 20:
                    try:
                        g["json"] = json.loads(tar.extractfile(member).read())
                    except ValueError:
                        pass
            # tarfile stops quietly at a cut header: a whole archive ends with two zero blocks
            tar.fileobj.seek(tar.offset)
            end = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
            if len(end) < 2 * tarfile.BLOCKSIZE or end.strip(b"\0"):
                raise tarfile.ReadError("the archive is cut short (no end-of-archive blocks)")
    except (tarfile.TarError, OSError, EOFError) as e:  # a truncated or corrupt shard: keep what was read
        logger.error(f"Cannot read webdataset shard {shard} past {len(order)} samples, skipping the rest: {e}")
        complete = False
    samples, skipped = [], 0
    for key in order:
        g = groups[key]
        caption = g.get("txt") or str((g.get("json") or {}).get("caption") or "").strip()
        if "image" not in g or not caption:
            skipped += 1
            continue
        name, offset, size = g["image"]
        samples.append([key, name, offset, size, caption])
    if skipped:
        logger.warning(f"{shard}: {skipped} samples without an image or a caption were left out")
    return samples, complete


def list_tar_shards(source: Union[str, Sequence[str]]) -> List[str]:
    """Shard paths from a directory (its ``*.tar``, sorted), a glob pattern, one ``.tar`` file or
    a list of any of these."""
    if not isinstance(source, str):
        return [s for item in source for s in list_tar_shards(item)]
    if os.path.isdir(source):
        shards = sorted(glob.glob(os.path.join(source, "*.tar")))
    elif any(ch in source for ch in "*?["):
        shards = sorted(glob.glob(source))
    else:
        shards = [source] if os.path.isfile(source) else []
    return shards


def webdataset_dicts(source: Union[str, Sequence[str]], num_threads: int = 8) -> List[Dict]:
    """Records of every sample of the shards of ``source`` (see :func:`list_tar_shards`)."""
    shards = list_tar_shards(source)
    if not shards:
        raise FileNotFoundError(
            f"No webdataset shards (*.tar) at {source}. Download the image-caption pairs with img2dataset, "
            "e.g. `img2dataset --url_list cc12m.tsv --input_format tsv --url_col url --caption_col caption "
            f"--output_format webdataset --output_folder {source} --image_size 256`."
        )
    with ThreadPoolExecutor(max_workers=max(1, min(num_threads, len(shards)))) as pool:
        per_shard = list(pool.map(scan_tar_shard, shards))
    records = [r for part in per_shard for r in part]
    for i, r in enumerate(records):
        r["image_id"] = i
    logger.info(f"{len(records)} image-caption pairs in {len(shards)} webdataset shards at {source}")
    return records


# ---- reading ---------------------------------------------------------------------------------------
def _describe(record: Dict) -> str:
    return f"{record['file_name']}:{record['tar_member']}" if "tar_member" in record else record["file_name"]


def read_caption_image(record: Dict) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of an image-caption record (a file, or a member of a tar shard
    read by offset). Raises :class:`UnreadableImageError` naming the file (and member)."""
    if "tar_offset" not in record:
        return read_image_rgb(record["file_name"])
    try:
        with open(record["file_name"], "rb") as f:
            f.seek(record["tar_offset"])
            data = f.read(record["tar_size"])
        if len(data) != record["tar_size"]:
            raise OSError(f"the shard ends after {len(data)} of {record['tar_size']} bytes")
        img = Image.open(io.BytesIO(data))
        img.load()
        img = ImageOps.exif_transpose(img)
        return np.asarray(img.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - every decoder error means the same to the user
        raise UnreadableImageError(f"Cannot read image {_describe(record)}: {e}") from e


# ---- registration ----------------------------------------------------------------------------------
def image_caption_dicts(source: Union[str, Sequence[str]], **table_kwargs) -> List[Dict]:
    """Records of any image-caption source: tar shards (a ``.tar``, a directory of them, a glob or
    a list), a ``.jsonl`` / ``.csv`` / ``.tsv`` table, or a folder of images with ``.txt`` captions."""
    if not isinstance(source, str) or source.endswith(".tar") or any(ch in source for ch in "*?["):
        return webdataset_dicts(source)
    if os.path.isfile(source):
        return image_caption_table_dicts(source, **table_kwargs)
    if os.path.isdir(source):
        return webdataset_dicts(source) if list_tar_shards(source) else image_caption_folder_dicts(source)
    raise FileNotFoundError(f"Image-caption source {source} does not exist (a folder, a .jsonl/.csv table, "
                            "or webdataset .tar shards).")


def register_image_caption_dataset(name: str, source: Union[str, Sequence[str]], prepare_hint: str = "",
                                   **table_kwargs) -> None:
    """Register ``name`` with detectron2 as image-caption pairs read from ``source`` (see
    :func:`image_caption_dicts`; ``image_root`` / ``image_key`` / ``caption_key`` for tables).
    Nothing is read until the dataset is first used."""
    def load():
        try:
            return image_caption_dicts(source, **table_kwargs)
        except FileNotFoundError as e:
            hint = f" Prepare it with: {prepare_hint}" if prepare_hint else ""
            raise FileNotFoundError(f"Dataset {name!r}: {e}{hint}") from e

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(image_caption_source=source, evaluator_type="none")


def _datasets_root() -> str:
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


# Built-in image-caption datasets: name -> shard directory under $DETECTRON2_DATASETS.
BUILTIN_IMAGE_CAPTION = {
    "cc12m_train": "cc12m",
    "cc3m_train": "cc3m",
}


def register_builtin_image_caption() -> None:
    root = _datasets_root()
    for name, sub in BUILTIN_IMAGE_CAPTION.items():
        if name in DatasetCatalog.list():
            continue
        folder = os.path.join(root, sub)
        register_image_caption_dataset(
            name, folder,
            prepare_hint=(f"img2dataset --url_list <{sub}.tsv> --input_format tsv --url_col url --caption_col "
                          f"caption --output_format webdataset --output_folder {folder} (see docs/vil_seg.md)"))


register_builtin_image_caption()
