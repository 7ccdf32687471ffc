"""Compact record tables: millions of dataset records as a few NumPy arrays instead of Python dicts.

A training loader's workers are forked from their rank; a worker that touches a Python object
writes its reference count, so the page holding it is copied. Over a list of 12 M dicts every
worker slowly becomes a private copy of the list (the reason detectron2 serialises dataset dicts
with ``DatasetFromList(serialize=True)``). A :class:`RecordTable` keeps each field as one array
(strings: UTF-8 bytes + offsets; repeated strings such as directories or shard paths: codes into
a small table of distinct values; integers: int64), optionally memory-mapped from a directory
written once per machine, and builds the record dict of one row only when it is asked for.

On disk a table is a directory: ``meta.json`` (fields, kinds, row count, and the caller's
``info``) plus one ``.npy`` file per array. It is written under a temporary name and renamed, so
a table directory is always complete; :func:`build_or_open` lets one process of a machine build
it while the others wait on a file lock and then map it.
"""
import fcntl
import json
import logging
import os
import shutil
import tempfile
from array import array
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

TABLE_VERSION = 1
STR, CATEGORY, PATH, INT = "str", "category", "path", "int"
# a category's distinct values are decoded into Python strings once per process up to this many
# (shard paths, image directories); beyond it they are decoded on each access
MAX_DECODED_VALUES = 65_536


class StringColumn:
    """n strings as UTF-8 ``data`` (uint8) and ``offsets`` (int64, n + 1): string i is
    ``data[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8", "surrogatepass")

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> "StringColumn":
        b = _StringBuilder()
        for s in strings:
            b.add(s)
        return b.finish()


class _StringBuilder:
    def __init__(self):
        self.data, self.offsets = bytearray(), array("q", [0])

    def add(self, s: str) -> None:
        self.data += s.encode("utf-8", "surrogatepass")
        self.offsets.append(len(self.data))

    def finish(self) -> StringColumn:
        return StringColumn(np.frombuffer(bytes(self.data), np.uint8), np.frombuffer(self.offsets, np.int64).copy())


class _CategoryBuilder:
    """Strings with few distinct values (shard paths, directories): int32 codes + the values."""

    def __init__(self):
        self.codes, self.values, self.lookup = array("i"), [], {}

    def add(self, s: str) -> None:
        code = self.lookup.get(s)
        if code is None:
            code = self.lookup[s] = len(self.values)
            self.values.append(s)
        self.codes.append(code)


class TableBuilder:
    """Accumulates rows field by field without keeping a dict per row.

    ``fields``: (name, kind) pairs; kinds: ``str`` (any string), ``category`` (a string with few
    distinct values), ``path`` (a file path stored as a category directory + a string base name:
    rebuilt byte for byte), ``int`` (int64)."""

    def __init__(self, fields: Sequence[Tuple[str, str]]):
        self.fields = list(fields)
        self._parts = {}
        for name, kind in self.fields:
            if kind == STR:
                self._parts[name] = _StringBuilder()
            elif kind == CATEGORY:
                self._parts[name] = _CategoryBuilder()
            elif kind == PATH:
                self._parts[name] = (_CategoryBuilder(), _StringBuilder())
            elif kind == INT:
                self._parts[name] = array("q")
            else:
                raise ValueError(f"Unknown record-table field kind {kind!r} for {name!r}")
        self._adders = [self._adder(name, kind) for name, kind in self.fields]
        self.num_rows = 0

    def _adder(self, name: str, kind: str) -> Callable:
        part = self._parts[name]
        if kind == PATH:
            dirs, bases = part

            def add_path(s: str) -> None:
                cut = s.rfind("/") + 1
                dirs.add(s[:cut])
                bases.add(s[cut:])
            return add_path
        return part.add if kind != INT else part.append

    def add(self, *values) -> None:
        """One row: the values in the order of ``fields``."""
        for add, v in zip(self._adders, values):
            add(v)
        self.num_rows += 1

    def extend_rows(self, rows: Sequence[Sequence]) -> None:
        for row in rows:
            self.add(*row)

    def arrays(self) -> Dict[str, np.ndarray]:
        out = {}
        for name, kind in self.fields:
            part = self._parts[name]
            if kind == STR:
                col = part.finish()
                out[f"{name}.data"], out[f"{name}.offsets"] = col.data, col.offsets
            elif kind in (CATEGORY, PATH):
                cat = part if kind == CATEGORY else part[0]
                values = StringColumn.from_strings(cat.values)
                out[f"{name}.codes"] = np.frombuffer(cat.codes, np.int32).copy()
                out[f"{name}.values.data"], out[f"{name}.values.offsets"] = values.data, values.offsets
                if kind == PATH:
                    col = part[1].finish()
                    out[f"{name}.base.data"], out[f"{name}.base.offsets"] = col.data, col.offsets
            else:
                out[name] = np.frombuffer(part, np.int64).copy()
        return out

    def finish(self, info: Optional[Dict] = None, id_field: Optional[str] = "image_id") -> "RecordTable":
        return RecordTable(self.fields, self.arrays(), self.num_rows, info or {}, id_field)


class RecordTable(Sequence):
    """Read-only sequence of record dicts backed by arrays (in memory or memory-mapped).

    ``table[i]`` is a new dict ``{field: value, ..., id_field: i}``; slices give lists of dicts.
    ``id_field`` (default ``image_id``) is the row number, not stored. Forked workers share the
    arrays: reading a row touches only the pages of its bytes, never a Python object of the table."""

    def __init__(self, fields: Sequence[Tuple[str, str]], arrays: Dict[str, np.ndarray], num_rows: int,
                 info: Optional[Dict] = None, id_field: Optional[str] = "image_id", path: Optional[str] = None):
        self.fields, self.num_rows, self.info, self.id_field, self.path = list(fields), num_rows, info or {}, \
            id_field, path
        self._arrays = arrays
        self._getters = [(name, self._getter(name, kind)) for name, kind in self.fields]

    def _getter(self, name: str, kind: str) -> Callable[[int], object]:
        a = self._arrays
        if kind == STR:
            col = StringColumn(a[f"{name}.data"], a[f"{name}.offsets"])
            return col.__getitem__
        if kind in (CATEGORY, PATH):
            codes = a[f"{name}.codes"]
            values = StringColumn(a[f"{name}.values.data"], a[f"{name}.values.offsets"])
            if len(values) <= MAX_DECODED_VALUES:  # few distinct values: kept as str objects
                decoded = [values[j] for j in range(len(values))]
                value = decoded.__getitem__
            else:
                value = values.__getitem__
            if kind == CATEGORY:
                return lambda i: value(codes[i])
            base = StringColumn(a[f"{name}.base.data"], a[f"{name}.base.offsets"])
            return lambda i: value(codes[i]) + base[i]
        col = a[name]
        return lambda i: int(col[i])

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.num_rows))]
        i = int(i)
        if i < 0:
            i += self.num_rows
        if not 0 <= i < self.num_rows:
            raise IndexError(f"record {i} of a table of {self.num_rows}")
        record = {name: get(i) for name, get in self._getters}
        if self.id_field:
            record[self.id_field] = i
        return record

    def __iter__(self) -> Iterator[Dict]:
        for i in range(self.num_rows):
            yield self[i]

    def column(self, name: str) -> np.ndarray:
        """The int64 array of an ``int`` field (or the codes of a category field)."""
        return self._arrays[name] if name in self._arrays else self._arrays[f"{name}.codes"]

    def category_values(self, name: str) -> List[str]:
        values = StringColumn(self._arrays[f"{name}.values.data"], self._arrays[f"{name}.values.offsets"])
        return [values[j] for j in range(len(values))]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values())

    # ---- on disk ----------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the table to the directory ``path`` atomically (a temporary directory renamed);
        if another process wrote it first, its copy is kept."""
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".partial-", dir=parent)
        try:
            for key, arr in self._arrays.items():
                np.save(os.path.join(tmp, key + ".npy"), np.ascontiguousarray(arr))
            meta = {"version": TABLE_VERSION, "fields": self.fields, "num_rows": self.num_rows, "info": self.info,
                    "id_field": self.id_field, "arrays": sorted(self._arrays)}
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f)
            try:
                os.rename(tmp, path)
            except OSError:
                if not os.path.isfile(os.path.join(path, "meta.json")):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def open(cls, path: str) -> "RecordTable":
        """Memory-map a table written by :meth:`save`. Raises ``ValueError`` naming the directory
        if it is incomplete or of another version."""
        meta_file = os.path.join(path, "meta.json")
        try:
            with open(meta_file, encoding="utf-8") as f:
                meta = json.load(f)
            if meta.get("version") != TABLE_VERSION:
                raise ValueError(f"version {meta.get('version')}, expected {TABLE_VERSION}")
            arrays = {k: np.load(os.path.join(path, k + ".npy"), mmap_mode="r") for k in meta["arrays"]}
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"Record table {path} is unreadable ({e}); delete the directory to rebuild it.") from e
        fields = [tuple(f) for f in meta["fields"]]
        return cls(fields, arrays, meta["num_rows"], meta["info"], meta["id_field"], path=path)

    def __reduce__(self):  # a memory-mapped table travels by path (spawned workers map it again)
        if self.path:
            return (RecordTable.open, (self.path,))
        return (RecordTable, (self.fields, dict(self._arrays), self.num_rows, self.info, self.id_field))


def build_or_open(path: str, build: Callable[[], RecordTable],
                  is_valid: Callable[[RecordTable], bool] = lambda t: True) -> RecordTable:
    """The table cached at ``path``, built by ``build()`` when it is missing or ``is_valid`` says
    it is stale. One process builds, the others (ranks of the machine, or separate programs
    sharing the cache) wait on a lock file next to it and then map the same files.

    A lock rather than a barrier of the process group: a rank whose build fails releases the lock
    (the next one tries and reports the same error) instead of leaving the others waiting, and
    processes that were not launched together are covered too."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        lock = open(path + ".lock", "a+")
    except OSError as e:  # a read-only cache costs a build per process, not the run
        logger.warning(f"Cannot use the record-table cache {path} ({e}); building the table in memory")
        return build()
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.isfile(os.path.join(path, "meta.json")):
                try:
                    table = RecordTable.open(path)
                    if is_valid(table):
                        return table
                except ValueError:
                    pass
                shutil.rmtree(path, ignore_errors=True)
            table = build()
            try:
                table.save(path)
            except OSError as e:  # e.g. a full disk: this process keeps its table in memory
                logger.warning(f"Cannot write the record table {path} ({e}); keeping it in memory")
                return table
            return RecordTable.open(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ConcatRecords(Sequence):
    """Several record sequences as one, without copying them (``image_id`` stays per source)."""

    def __init__(self, parts: Sequence[Sequence[Dict]]):
        self.parts = list(parts)
        self.ends = np.cumsum([len(p) for p in self.parts]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        part = int(np.searchsorted(self.ends, i, side="right"))
        return self.parts[part][i - (int(self.ends[part - 1]) if part else 0)]
