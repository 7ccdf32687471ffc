"""Where the CLIP weights of ``MODEL.CLIP.PRETRAINED`` come from, apart from the CLIP model.

The value is, in this order: ``none`` (random weights, also ``""`` / ``random``), a registered
weights tag (:func:`register_weights_tag`; ToyWorld registers ``toyworld``, its tiny CLIP), a local
checkpoint file (open_clip or OpenAI layout), or an open_clip pretrained tag (a cached file, or a
download when the network is there). :func:`resolve_clip_weights` turns it into a file path.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

NO_WEIGHTS = ("", "none", "random")


class CLIPWeightsUnavailable(RuntimeError):
    """An open_clip pretrained tag whose weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class WeightsTag:
    """A name for CLIP weights made by a part of the project (not an open_clip tag).

    Attributes:
        checkpoint: open_clip model name -> the checkpoint file the tag stands for (it may not exist).
        missing: the error message when that file does not exist, formatted with ``name`` (the
            model) and ``path``; it should say how to make the file.
    """
    checkpoint: Callable[[str], str]
    missing: str


_WEIGHTS_TAGS: Dict[str, WeightsTag] = {}


def register_weights_tag(tag: str, checkpoint: Callable[[str], str], missing: str) -> None:
    """Make ``MODEL.CLIP.PRETRAINED <tag>`` load ``checkpoint(model name)`` (see :class:`WeightsTag`).
    Registering a tag again replaces it."""
    if tag.lower() in NO_WEIGHTS:
        raise ValueError(f"{tag!r} means 'no weights' and cannot be registered as a weights tag.")
    _WEIGHTS_TAGS[tag] = WeightsTag(checkpoint, missing)


def is_weights_tag(tag: str) -> bool:
    """Whether ``tag`` is a registered weights tag."""
    return tag in _WEIGHTS_TAGS


def weights_tag_file(tag: str, name: str) -> Optional[str]:
    """The checkpoint file a registered weights tag stands for with model ``name`` (whether it exists
    or not); None when ``tag`` is not registered."""
    entry = _WEIGHTS_TAGS.get(tag)
    return None if entry is None else entry.checkpoint(name)


def _registered_tag_file(tag: str, name: str) -> str:
    path = weights_tag_file(tag, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.CLIP.PRETRAINED={tag}: " + _WEIGHTS_TAGS[tag].missing.format(name=name,
                                                                                                      path=path))
    return path


def _cached_tag_file(cfg: Dict, cache_dir: Optional[str]) -> Optional[str]:
    """The local file of an open_clip tag if a previous download left it in a cache."""
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, filename = os.path.split(hub)  # "org/repo/" -> the repo's default file names
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            for name in names:
                hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir or None)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
    url = cfg.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname
    if not host:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_tag(name: str, tag: str, cache_dir: Optional[str]) -> Tuple[str, bool]:
    """Path of the cached (or freshly downloaded) file of an open_clip pretrained tag, and whether
    the tag implies QuickGELU. Offline and not cached, it fails at once (no download retries) saying
    how to pass a local file."""
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"MODEL.CLIP.PRETRAINED={tag!r} is neither an existing file nor an open_clip tag of "
            f"{name!r} (known tags: {known}). Use a tag, a path to a local checkpoint, or 'none'."
        )
    quick_gelu = bool(cfg.get("quick_gelu", False))
    path = _cached_tag_file(cfg, cache_dir)
    if path:
        return path, quick_gelu
    source = ("https://huggingface.co/" + cfg["hf_hub"]) if cfg.get("hf_hub") else cfg.get("url", "")
    err = "no network access to " + source
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline and _reachable(source):
        try:
            path = download_pretrained(cfg, cache_dir=cache_dir or None)
        except Exception as e:  # noqa: BLE001 - every download failure means the same to the user
            err = str(e)
    if not path or not os.path.isfile(path):
        raise CLIPWeightsUnavailable(
            f"open_clip weights {name}/{tag} are not cached and cannot be downloaded here ({err}). "
            f"On a machine with internet, get them (open_clip.create_model({name!r}, "
            f"pretrained={tag!r}) caches them; source: {source}), copy the file over and set "
            f"MODEL.CLIP.PRETRAINED /path/to/that/file (open_clip or OpenAI layout)."
        )
    return path, quick_gelu


def resolve_clip_weights(name: str, pretrained: str, cache_dir: Optional[str] = None) -> Tuple[Optional[str], bool]:
    """The checkpoint file of ``MODEL.CLIP.PRETRAINED`` for the open_clip model ``name`` (None: no
    weights), and whether an open_clip tag implies QuickGELU. Raises FileNotFoundError for a missing
    file or a registered tag whose file is not made yet, ValueError for an unknown tag, and
    :class:`CLIPWeightsUnavailable` for an open_clip tag that is neither cached nor downloadable."""
    pretrained = str(pretrained)
    if pretrained.lower() in NO_WEIGHTS:
        return None, False
    if is_weights_tag(pretrained):
        return _registered_tag_file(pretrained, name), False
    if os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.expanduser(pretrained), False
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise FileNotFoundError(
            f"MODEL.CLIP.PRETRAINED={pretrained!r}: no such file. Give the path of a local "
            "CLIP checkpoint (open_clip or OpenAI layout), an open_clip tag, or 'none'."
        )
    return _resolve_tag(name, pretrained, cache_dir)
