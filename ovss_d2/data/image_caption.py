"""Image-caption datasets (ViL-Seg's training data), registered the detectron2 way.

Three sources, one record format (``file_name``, ``caption``, ``image_id``):

* a folder of images, each with a caption file of the same stem (``a/b.jpg`` + ``a/b.txt``), as
  img2dataset's ``files`` output format writes them;
* a table of (image, caption) rows: JSON lines (``.jsonl``) or CSV with a header;
* webdataset tar shards as img2dataset's ``webdataset`` output format writes them (how CC12M is
  usually downloaded): ``00000.tar`` holding ``<key>.jpg``, ``<key>.txt``, ``<key>.json``. Shards
  are never unpacked: their headers are read once (one index of member offsets for the whole
  source, cached under ``$OVSS_D2_CACHE/image_caption_index``) and each image is read straight out
  of the tar by offset. Such records carry ``tar_member``, ``tar_offset`` and ``tar_size`` besides
  the shard path in ``file_name``.

A source's records are a :class:`~ovss_d2.data.record_table.RecordTable` (a sequence of dicts
kept as a few arrays; tables and shard indexes memory-mapped from the cache), not a list of
Python dicts: CC12M's 12 M records would otherwise cost every rank and every loader worker
gigabytes.

:func:`read_caption_image` reads either kind; a file that cannot be decoded raises
:class:`~ovss_d2.data.io.UnreadableImageError` naming it (the training loader reports and skips it).
"""
import contextlib
import csv
import glob
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image, ImageOps
from tqdm import tqdm

from ..paths import IMAGE_CAPTION_INDEX, cache_path
from .datasets import add_builtin_datasets
from .io import UnreadableImageError, read_image_rgb
from .record_table import CATEGORY, INT, PATH, STR, RecordTable, TableBuilder, build_or_open

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
IMAGE_COLUMNS = ("image", "file_name", "filepath", "image_path", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "txt")
INDEX_VERSION = 2  # 2: one record table per source (1: a JSON file per shard)
# record fields (``image_id`` is the row number): folders and tables, webdataset shards
CAPTION_FIELDS = (("file_name", PATH), ("caption", STR))
SHARD_FIELDS = (("file_name", CATEGORY), ("tar_member", STR), ("tar_offset", INT), ("tar_size", INT),
                ("caption", STR), ("key", STR))
PROGRESS_MIN_BYTES, PROGRESS_MIN_SHARDS = 64 << 20, 16  # progress bars only for sources this large


# ---- folders ---------------------------------------------------------------------------------------
def _read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def _cache_root() -> str:
    return cache_path(IMAGE_CAPTION_INDEX)


def _cache_path(kind: str, *key) -> str:
    tag = json.dumps([INDEX_VERSION, kind, *key])
    return os.path.join(_cache_root(), f"{kind}-{hashlib.sha1(tag.encode()).hexdigest()}")


def image_caption_folder_dicts(folder: str) -> RecordTable:
    """Every image under ``folder`` (recursively, sorted) that has a ``.txt`` caption of the same
    stem; images without one are counted and reported. Records ``file_name``, ``caption``,
    ``image_id``, as a :class:`RecordTable` built in memory (a folder is listed on every start:
    its files can change without the folder's own modification time changing)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image-caption folder {folder} does not exist.")
    table, missing = TableBuilder(CAPTION_FIELDS), 0
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
            table.add(os.path.join(root, name), caption)
    if missing:
        logger.warning(f"{folder}: {missing} images without a (non-empty) .txt caption were left out")
    if not table.num_rows:
        raise ValueError(f"Image-caption folder {folder} holds no image with a .txt caption of the same name "
                         f"(e.g. 0001.jpg + 0001.txt; images: {', '.join(IMAGE_EXTENSIONS)}).")
    return table.finish({"kind": "folder", "source": folder})


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


def _table_rows(table: str) -> Iterator[Dict]:
    """The rows of a ``.jsonl`` / ``.csv`` / ``.tsv`` table one at a time (never all of them)."""
    ext = os.path.splitext(table)[1].lower()
    if ext in (".jsonl", ".json"):
        with open(table, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{table}, line {line_no}: not valid JSON ({e}).") from e
    elif ext in (".csv", ".tsv"):
        with open(table, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
    else:
        raise ValueError(f"Image-caption table {table}: use .jsonl (one JSON object a line) or .csv / .tsv "
                         "with a header.")


def _build_table_records(table: str, image_root: str, image_key: Optional[str],
                         caption_key: Optional[str]) -> RecordTable:
    rows = _table_rows(table)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"Image-caption table {table} is empty.")
    columns = list(first.keys())
    img_col = _pick_column(columns, image_key, IMAGE_COLUMNS, "image", table)
    cap_col = _pick_column(columns, caption_key, CAPTION_COLUMNS, "caption", table)
    out, empty = TableBuilder(CAPTION_FIELDS), 0
    big = os.path.getsize(table) >= PROGRESS_MIN_BYTES
    with tqdm(unit=" rows", unit_scale=True, desc=f"indexing {os.path.basename(table)}", disable=not big,
              mininterval=2) as bar:
        for n, row in enumerate(itertools.chain([first], rows), 1):
            caption = str(row.get(cap_col) or "").strip()
            if not caption or not row.get(img_col):
                empty += 1
            else:
                out.add(os.path.join(image_root, str(row[img_col])), caption)
            if n % 100_000 == 0:
                bar.update(100_000)
    if empty:
        logger.warning(f"{table}: {empty} rows without an image path or caption were left out")
    return out.finish({"kind": "table", "source": table, "left_out": empty})


def image_caption_table_dicts(table: str, image_root: Optional[str] = None, image_key: Optional[str] = None,
                              caption_key: Optional[str] = None) -> RecordTable:
    """Rows of a ``.jsonl`` / ``.csv`` table of (image path, caption). Relative image paths are
    relative to ``image_root`` (default: the table's folder).

    The rows are read once per machine into a compact record table cached under
    ``$OVSS_D2_CACHE/image_caption_index`` (keyed by the table's path, size and modification time
    and the arguments); later starts memory-map it."""
    if not os.path.isfile(table):
        raise FileNotFoundError(f"Image-caption table {table} does not exist.")
    image_root = image_root or os.path.dirname(os.path.abspath(table))
    st = os.stat(table)
    path = _cache_path("table", os.path.abspath(table), st.st_size, st.st_mtime_ns, image_root, image_key,
                       caption_key)
    records = build_or_open(path, lambda: _build_table_records(table, image_root, image_key, caption_key))
    if records.info.get("left_out"):
        logger.warning(f"{table}: {records.info['left_out']} rows without an image path or caption were left out")
    return records


# ---- webdataset shards -----------------------------------------------------------------------------
def _split_key(member_name: str):
    """webdataset convention: the key is the path up to the first dot of the file name."""
    directory, base = os.path.split(member_name)
    stem, _, ext = base.partition(".")
    return os.path.join(directory, stem) if directory else stem, ext.lower()


def scan_tar_shard(shard: str) -> List[Dict]:
    """The samples of one webdataset tar shard, without unpacking it: the tar headers are walked
    once (member data is skipped by seeking), captions come from ``<key>.txt`` (or the ``caption``
    of ``<key>.json``) and each image is located by its data offset and size.

    Returns records ``file_name`` (the shard), ``tar_member``, ``tar_offset``, ``tar_size``,
    ``caption``, ``key``, in shard order. Samples without an image or a caption are reported and
    left out; so is the rest of a truncated or corrupt shard."""
    samples, _, problems = _scan_tar_members(shard)
    for level, message in problems:
        logger.log(level, message)
    return [{"file_name": shard, "tar_member": m, "tar_offset": o, "tar_size": s, "caption": c, "key": k}
            for k, m, o, s, c in samples]


class _UnusualTar(Exception):
    """A header the fast reader leaves to :mod:`tarfile` (PAX / GNU long names, sparse files ...)."""


_NUL_BLOCK = bytes(tarfile.BLOCKSIZE)
_SKIPPED_TYPES = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
                  tarfile.FIFOTYPE)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        raise _UnusualTar("base-256 number")
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    return int(digits, 8) if digits else 0


def _fast_tar_files(f, file_size: int) -> Iterator[Tuple[str, int, int]]:
    """(name, data offset, size) of the regular files of a ustar archive, reading only the 512-byte
    headers (what ``tarfile`` does in Python objects, about 10x faster). Raises ``tarfile.ReadError``
    where the archive is cut or damaged, :class:`_UnusualTar` for headers it leaves to tarfile."""
    pos = 0
    while True:
        f.seek(pos)
        header = f.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("the archive is cut short (no end-of-archive blocks)" if not header
                                    else "unexpected end of data")
        if header == _NUL_BLOCK:
            if f.read(tarfile.BLOCKSIZE) != _NUL_BLOCK:
                raise tarfile.ReadError("the archive is cut short (no end-of-archive blocks)")
            return
        try:
            checksum = _octal(header[148:156])
        except ValueError:
            raise tarfile.ReadError(f"invalid header at byte {pos}") from None
        if checksum != 256 + sum(header[:148]) + sum(header[156:]) and \
                checksum != 256 + sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]):
            raise tarfile.ReadError(f"bad checksum at byte {pos}")
        kind = header[156:157]
        size = _octal(header[124:136])
        if kind in tarfile.REGULAR_TYPES and kind not in (tarfile.GNUTYPE_SPARSE, tarfile.CONTTYPE):
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:265] == tarfile.POSIX_MAGIC:
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if prefix:
                    name = prefix + "/" + name
            if not (kind == tarfile.AREGTYPE and name.endswith("/")):
                yield name, pos + tarfile.BLOCKSIZE, size
        elif kind not in _SKIPPED_TYPES:
            raise _UnusualTar(f"member type {kind!r}")
        pos += tarfile.BLOCKSIZE + (size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE


def _tarfile_files(tar: tarfile.TarFile) -> Iterator[Tuple[str, int, int]]:
    """The same as :func:`_fast_tar_files` through :mod:`tarfile` (any format it reads)."""
    for member in tar:
        if member.isfile():
            yield member.name, member.offset_data, member.size
    # tarfile stops quietly at a cut header: a whole archive ends with two zero blocks
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.strip(b"\0"):
        raise tarfile.ReadError("the archive is cut short (no end-of-archive blocks)")


def _scan_tar_members(shard: str):
    """([key, member, offset, size, caption] per sample, whether the whole shard was read,
    [(logging level, message)] to report; the caller logs them: this runs in pool processes)."""
    try:
        return _group_tar_members(shard, fast=True)
    except _UnusualTar:
        return _group_tar_members(shard, fast=False)


def _group_tar_members(shard: str, fast: bool):
    groups: Dict[str, Dict] = {}
    order: List[str] = []
    complete, problems = True, []
    try:
        file_size = os.path.getsize(shard)
        with open(shard, "rb") as f, (contextlib.nullcontext() if fast else tarfile.open(fileobj=f, mode="r:")) as tar:
            for name, offset, size in (_fast_tar_files(f, file_size) if fast else _tarfile_files(tar)):
                if offset + size > file_size:
                    raise tarfile.ReadError(f"{name} ends after the end of the file")
                key, ext = _split_key(name)
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                g = groups[key]
                if ext in IMAGE_EXTENSIONS and "image" not in g:
                    g["image"] = (name, offset, size)
                elif ext == "txt" or (ext == "json" and size < 1 << 20):
                    position = f.tell()
                    f.seek(offset)
                    data = f.read(size)
                    f.seek(position)
                    if ext == "txt":
                        g["txt"] = data.decode("utf-8", errors="replace").strip()
                    else:
                        try:
                            g["json"] = json.loads(data)
                        except ValueError:
                            pass
    except (tarfile.TarError, OSError, EOFError) as e:  # a truncated or corrupt shard: keep what was read
        problems.append((logging.ERROR, f"Cannot read webdataset shard {shard} past {len(order)} samples, "
                                        f"skipping the rest: {e}"))
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
        problems.append((logging.WARNING, f"{shard}: {skipped} samples without an image or a caption were left out"))
    return samples, complete, problems


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


def _shard_stat(shard: str) -> Optional[List[int]]:
    try:
        st = os.stat(shard)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _scan_shards(shards: Sequence[str], num_workers: int) -> Iterator[Tuple]:
    """(samples, complete, problems) of every shard, in order; shards are scanned by a pool of
    processes (walking tar headers is Python code: threads would share one core)."""
    workers = max(1, min(num_workers, len(shards)))
    bar = dict(total=len(shards), unit="shard", desc="indexing webdataset shards", mininterval=2,
               disable=len(shards) < PROGRESS_MIN_SHARDS)
    if workers == 1 or multiprocessing.current_process().daemon:  # a daemon (e.g. a loader worker) cannot fork
        yield from tqdm(map(_scan_tar_members, shards), **bar)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from tqdm(pool.map(_scan_tar_members, shards, chunksize=4), **bar)


def _build_webdataset_index(source, shards: Sequence[str], num_workers: int) -> RecordTable:
    out, per_shard = TableBuilder(SHARD_FIELDS), []
    for shard, (samples, complete, problems) in zip(shards, _scan_shards(shards, num_workers)):
        for level, message in problems:
            logger.log(level, message)
        for key, member, offset, size, caption in samples:
            out.add(shard, member, offset, size, caption, key)
        per_shard.append([shard, *(_shard_stat(shard) or [-1, -1]), complete, len(samples)])
    return out.finish({"kind": "webdataset", "source": source, "shards": per_shard})


def _stale_shards(index: RecordTable, shards: Sequence[str]) -> List[str]:
    """What differs between an index and the shards now on disk, one line per shard."""
    indexed = {s[0]: s for s in index.info.get("shards", [])}
    problems = [f"{s}: missing (indexed, no longer there)" for s in indexed if s not in set(shards)]
    for shard in shards:
        if shard not in indexed:
            problems.append(f"{shard}: new since the index was built")
            continue
        now, then = _shard_stat(shard), indexed[shard][1:3]
        if now is None:
            problems.append(f"{shard}: missing (indexed, no longer there)")
        elif now[0] != then[0]:
            problems.append(f"{shard}: {now[0]} bytes, {then[0]} when indexed (truncated or changed)")
        elif now[1] != then[1]:
            problems.append(f"{shard}: modified since the index was built")
    return problems


def webdataset_dicts(source: Union[str, Sequence[str]], num_workers: Optional[int] = None) -> RecordTable:
    """Records of every sample of the shards of ``source`` (see :func:`list_tar_shards`).

    One index for the whole source, built once per machine (a pool of ``num_workers`` processes,
    default one per core, with a progress bar) into a record table under
    ``$OVSS_D2_CACHE/image_caption_index`` that every rank and worker memory-maps. A shard that is
    missing, new, truncated or modified since the index was built is named and the index rebuilt;
    a shard found cut short or corrupt is named on every start (the samples before the damage are
    used)."""
    shards = list_tar_shards(source)
    if not shards:
        raise FileNotFoundError(
            f"No webdataset shards (*.tar) at {source}. Download the image-caption pairs with img2dataset, "
            "e.g. `img2dataset --url_list cc12m.tsv --input_format tsv --url_col url --caption_col caption "
            f"--output_format webdataset --output_folder {source} --image_size 256`."
        )
    spec = [os.path.abspath(s) for s in ([source] if isinstance(source, str) else source)]
    workers = num_workers or os.cpu_count() or 1

    def is_valid(index: RecordTable) -> bool:
        stale = _stale_shards(index, shards)
        if stale:
            shown = "\n  ".join(stale[:20]) + (f"\n  ... and {len(stale) - 20} more" if len(stale) > 20 else "")
            logger.warning(f"The webdataset index of {source} is out of date, rebuilding it:\n  {shown}")
        return not stale

    records = build_or_open(_cache_path("webdataset", spec), lambda: _build_webdataset_index(source, shards, workers),
                            is_valid)
    cut = [s[0] for s in records.info["shards"] if not s[3]]
    if cut:
        logger.error(f"{len(cut)} webdataset shards of {source} are cut short or corrupt; only the samples before the "
                     f"damage are used (download them again): {', '.join(cut[:10])}"
                     + (f" and {len(cut) - 10} more" if len(cut) > 10 else ""))
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
def image_caption_dicts(source: Union[str, Sequence[str]], **table_kwargs) -> RecordTable:
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
                          f"caption --output_format webdataset --output_folder {folder} (see docs/methods/vil_seg.md)"))


add_builtin_datasets("image_caption", register_builtin_image_caption)  # registered by `import ovss_d2`
