"""Text embeddings of a vocabulary: template ensembles, synonyms, batching and a two-level cache
(memory and disk) so a vocabulary is run through the text encoder once."""
import hashlib
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Set

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...paths import TEXT_EMBEDDINGS, cache_path
from ...utils.vocabulary import check_vocabulary
from .templates import validate_templates

logger = logging.getLogger(__name__)

SYNONYM_SEPARATOR = ", "
CACHE_FORMAT = 2  # a dict with the class names, templates, shape and SHA-256 of the tensor (1: the bare tensor)
_UNWRITABLE_WARNED: Set[str] = set()  # cache folders already reported unwritable (one warning each)


def default_cache_dir() -> str:
    """``$OVSS_D2_CACHE/text_embeddings``."""
    return cache_path(TEXT_EMBEDDINGS)


def split_synonyms(class_name: str) -> List[str]:
    """'person, people' -> ['person', 'people']: each synonym is embedded, then averaged."""
    syns = [s.strip() for s in class_name.split(SYNONYM_SEPARATOR)]
    return [s for s in syns if s] or [class_name.strip()]


class TextEmbeddingCache:
    """Embeds vocabularies with a CLIP text encoder, once.

    The key of a vocabulary is (model name, text-weights fingerprint, templates, class names).
    A hit in memory or on disk runs no text-encoder forward. A disk file also stores the class
    names, templates, shape and SHA-256 of its tensor, checked on every read: a damaged or replaced
    file is recomputed (and rewritten) with a warning, never used. A cache folder that cannot be
    written (read-only, full disk) turns the disk cache off with one warning; the embeddings are
    then kept in memory only.

    Args:
        clip: a :class:`CLIPWrapper`.
        cache_dir: directory of the disk cache; ``None`` or ``"none"`` keeps it in memory only.
        batch_size: prompts per text-encoder forward.
    """

    def __init__(self, clip, cache_dir: Optional[str] = None, batch_size: int = 256, synonyms: str = "average"):
        if synonyms not in ("average", "first"):
            raise ValueError(f"MODEL.TEXT.SYNONYMS must be 'average' or 'first', got {synonyms!r}")
        self.clip = clip
        self.cache_dir = None if cache_dir in (None, "none", "None") else cache_dir
        self.batch_size = batch_size
        self.synonyms = synonyms
        self._memory: Dict[str, torch.Tensor] = {}

    def key(self, class_names: Sequence[str], templates: Sequence[str]) -> str:
        payload = json.dumps(
            {"model": self.clip.name, "weights": self.clip.text_fingerprint(),
             "templates": list(templates), "classes": list(class_names), "synonyms": self.synonyms},
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __call__(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Returns (N, P, D) float32 CPU embeddings, L2-normalised per (class, template)."""
        class_names = check_vocabulary(class_names, warn_duplicates=False)
        validate_templates(templates)
        key = self.key(class_names, templates)
        if key in self._memory:
            return self._memory[key]
        path = os.path.join(self.cache_dir, f"{key}.pt") if self.cache_dir else None
        emb = self._read(path, class_names, templates) if path and os.path.isfile(path) else None
        if emb is None:
            emb = self.compute(class_names, templates)
            if path:
                self._save(emb, path, class_names, templates)
        self._memory[key] = emb
        return emb

    @staticmethod
    def checksum(emb: torch.Tensor) -> str:
        """SHA-256 of a (N, P, D) float32 CPU tensor's bytes."""
        return hashlib.sha256(emb.contiguous().numpy().tobytes()).hexdigest()

    def _read(self, path: str, class_names: Sequence[str], templates: Sequence[str]) -> Optional[torch.Tensor]:
        """The (N, P, D) embeddings of a cache file if it holds exactly what it should (the class
        names, templates, shape (N, P, D) and checksum), else None after a warning saying why."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a broken cache file is recomputed
            logger.warning(f"Text-embedding cache file {path} cannot be read ({type(e).__name__}): recomputing it.")
            return None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            problem = "it is in an older format or not a cache file"
        elif data.get("classes") != list(class_names):
            problem = "it holds the embeddings of other class names"
        elif data.get("templates") != list(templates):
            problem = "it holds the embeddings of other templates"
        elif not isinstance(data.get("embeddings"), torch.Tensor) or data["embeddings"].dtype != torch.float32:
            problem = "it holds no float32 embedding tensor"
        elif (list(data["embeddings"].shape) != list(data.get("shape", ()))
              or tuple(data["embeddings"].shape[:2]) != (len(class_names), len(templates))):
            problem = (f"its tensor has shape {tuple(data['embeddings'].shape)}, not ({len(class_names)}, "
                       f"{len(templates)}, D)")
        elif self.checksum(data["embeddings"]) != data.get("sha256"):
            problem = "its tensor does not match its checksum (the file was changed or damaged)"
        else:
            return data["embeddings"]
        logger.warning(f"Text-embedding cache file {path} is not used: {problem}. Recomputing it.")
        return None

    def _save(self, emb: torch.Tensor, path: str, class_names: Sequence[str], templates: Sequence[str]) -> None:
        """Write a cache file (atomically: concurrent ranks never read a half-written one). A folder
        that cannot be written turns the disk cache off, with one warning per folder."""
        from ...checkpoint import save_atomically

        data = {"format": CACHE_FORMAT, "classes": list(class_names), "templates": list(templates),
                "shape": list(emb.shape), "sha256": self.checksum(emb), "embeddings": emb}
        try:
            save_atomically(data, path)
        except (OSError, RuntimeError) as e:  # read-only folder, full disk (torch's writer raises RuntimeError)
            folder = os.path.dirname(path)
            if folder not in _UNWRITABLE_WARNED:
                _UNWRITABLE_WARNED.add(folder)
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
                logger.warning(f"Text-embedding cache folder {folder} cannot be written ({reason}): keeping text "
                               "embeddings in memory only for this run. Free space there or set OVSS_D2_CACHE "
                               "to a writable folder to cache them across runs.")
            self.cache_dir = None

    @torch.no_grad()
    def compute(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Run the text encoder (no gradient): (N, P, D) on the CPU, normalised."""
        was_training = self.clip.training
        self.clip.eval()
        try:
            return self.encode(class_names, templates, progress=True).float().cpu()
        finally:
            self.clip.train(was_training)

    def encode(self, class_names: Sequence[str], templates: Sequence[str], progress: bool = False) -> torch.Tensor:
        """Differentiable text embeddings (for a text encoder being trained): (N, P, D) on the
        model's device, synonyms averaged (or the first synonym only), normalised; no cache."""
        prompts = []
        synonyms = [split_synonyms(c) for c in class_names]
        if self.synonyms == "first":
            synonyms = [s[:1] for s in synonyms]
        for syns in synonyms:
            for s in syns:
                prompts.extend(t.format(s) for t in templates)
        chunks = range(0, len(prompts), self.batch_size)
        outs = []
        for start in tqdm(chunks, desc="text embeddings", disable=not (progress and len(chunks) > 1), unit="batch"):
            tokens = self.clip.tokenize(prompts[start:start + self.batch_size])
            outs.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        flat = torch.cat(outs)  # (sum_c S_c * P, D)
        p, d = len(templates), flat.shape[-1]
        per_class, i = [], 0
        for syns in synonyms:
            n = len(syns) * p
            per_class.append(flat[i:i + n].reshape(len(syns), p, d).mean(0))
            i += n
        return F.normalize(torch.stack(per_class), dim=-1)

