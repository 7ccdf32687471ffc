"""Where ovss-d2 keeps what it computes once and reuses: the cache root and its folders.

The root is ``$OVSS_D2_CACHE`` (default ``~/.cache/ovss_d2``), read on every call so that a process
(or a test) that changes the variable gets the new place:

=======================  ===================================================================
``text_embeddings/``     vocabularies run through a CLIP text encoder (``TextEmbeddingCache``)
``image_caption_index/`` record tables of image-caption sources (``data/image_caption.py``)
``toyworld/``            the generated ToyWorld, one folder per generator version
``tiny_clip/``           tiny CLIPs trained on ToyWorld (``toyworld/tiny_clip``)
=======================  ===================================================================
"""
import os

CACHE_ENV = "OVSS_D2_CACHE"
TEXT_EMBEDDINGS = "text_embeddings"
IMAGE_CAPTION_INDEX = "image_caption_index"
TOYWORLD = "toyworld"
TINY_CLIP = "tiny_clip"


def cache_root() -> str:
    """``$OVSS_D2_CACHE``, or ``~/.cache/ovss_d2`` when it is unset."""
    return os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "ovss_d2"))


def cache_path(*parts: str) -> str:
    """A folder (or file) below the cache root, e.g. ``cache_path(TEXT_EMBEDDINGS)``; not created here."""
    return os.path.join(cache_root(), *parts)
