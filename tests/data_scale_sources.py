"""Small deterministic image-caption sources of every kind (a folder, a JSONL and a CSV table,
webdataset shards with a cut and a caption-less sample), used by tests/test_data_scale.py to check
that records come out as they did before the compact record table (``tests/data/
image_caption_records.json`` was recorded from the list-of-dicts code of commit 89ece07).

Image payloads are fixed bytes, not encoded images: the index reads tar headers only, and fixed
bytes keep the member offsets independent of the JPEG encoder's version."""
import csv
import io
import json
import os
import tarfile
from typing import Dict, List

MIXED_NAMES = ("dscale_folder", "dscale_jsonl", "dscale_csv", "dscale_shards")
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "image_caption_records.json")


def _payload(i: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes((i * 37 + k) % 251 for k in range(40 + (i * 53) % 300))


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


def make_mixed_sources(root: str) -> Dict[str, str]:
    """Write the four sources under ``root``; returns name -> source path."""
    folder = os.path.join(root, "folder")
    for i in range(7):
        sub = os.path.join(folder, f"part{i % 2}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"img{i:02d}.jpg"), "wb") as f:
            f.write(_payload(i))
        if i != 3:  # an image without a caption: left out
            with open(os.path.join(sub, f"img{i:02d}.txt"), "w", encoding="utf-8") as f:
                f.write(f"  folder caption {i} \u00e9t\u00e9\n" if i != 5 else "\n")  # 5: empty caption
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    with open(os.path.join(root, "pairs.jsonl"), "w", encoding="utf-8") as f:
        for i in range(9):
            row = {"image": f"images/{i:03d}.jpg", "caption": f"json caption {i}", "url": f"http://x/{i}"}
            if i == 4:
                row["caption"] = ""  # left out
            f.write(json.dumps(row) + "\n")
            if i == 6:
                f.write("\n")  # blank lines are skipped
    with open(os.path.join(root, "pairs.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["url", "filepath", "text"])
        for i in range(5):
            w.writerow([f"http://y/{i}", f"/abs/csv/{i}.png" if i % 2 else f"rel/{i}.png", f"csv, row {i}"])
    shards = os.path.join(root, "shards")
    os.makedirs(shards, exist_ok=True)
    for s in range(3):
        with tarfile.open(os.path.join(shards, f"{s:05d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(6):
                key = f"{s:04d}{j:05d}"
                _add(tar, f"{key}.jpg", _payload(s * 10 + j))
                if j == 2:
                    continue  # no caption: left out
                if j == 4:
                    _add(tar, f"{key}.json", json.dumps({"caption": f"shard {s} json {j}"}).encode())
                else:
                    _add(tar, f"{key}.txt", f"shard {s} sample {j}".encode())
                    _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
    with open(os.path.join(shards, "00001.tar"), "rb") as f:  # a shard cut short while downloading
        data = f.read()
    with open(os.path.join(shards, "00003.tar"), "wb") as f:
        f.write(data[:5000])
    return {"dscale_folder": folder, "dscale_jsonl": os.path.join(root, "pairs.jsonl"),
            "dscale_csv": os.path.join(root, "pairs.csv"), "dscale_shards": shards}


def relative_records(records, root: str) -> List[Dict]:
    """Records as plain dicts with ``root`` replaced by ``<root>`` in their paths."""
    out = []
    for r in records:
        r = dict(r)
        r["file_name"] = r["file_name"].replace(root, "<root>")
        out.append(r)
    return out
