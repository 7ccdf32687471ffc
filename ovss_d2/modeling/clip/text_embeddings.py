"""Text embeddings of a vocabulary: template ensembles, synonyms, batching and a two-level cache
(memory and disk) so a vocabulary is run through the text encoder once."""
import hashlib
import json
import logging
import os
import tempfile
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...utils.vocabulary import check_vocabulary
from .templates import validate_templates

logger = logging.getLogger(__name__)

SYNONYM_SEPARATOR = ", "


def default_cache_dir() -> str:
    root = os.environ.get("OVSS_D2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ovss_d2"))
    return os.path.join(root, "text_embeddings")


def split_synonyms(class_name: str) -> List[str]:
    """'person, people' -> ['person', 'people']: each synonym is embedded, then averaged."""
    syns = [s.strip() for s in class_name.split(SYNONYM_SEPARATOR)]
    return [s for s in syns if s] or [class_name.strip()]


class TextEmbeddingCache:
    """Embeds vocabularies with a CLIP text encoder, once.

    The key of a vocabulary is (model name, text-weights fingerprint, templates, class names).
    A hit in memory or on disk runs no text-encoder forward.

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
        emb = None
        if path and os.path.isfile(path):
            try:
                emb = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - a broken cache file is recomputed
                logger.warning(f"Ignoring unreadable text-embedding cache file {path}: {e}")
        if emb is None:
            emb = self.compute(class_names, templates)
            if path:
                self._save(emb, path)
        self._memory[key] = emb
        return emb

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

    @staticmethod
    def _save(emb: torch.Tensor, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        os.close(fd)
        torch.save(emb, tmp)
        os.replace(tmp, path)  # atomic: concurrent ranks never read a half-written file
