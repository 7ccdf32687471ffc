"""Running a per-class decoder block a few classes at a time (``TEST.CLASS_CHUNK_SIZE``): less peak
memory at large vocabularies, the same outputs."""
import torch


def chunked_over_classes(fn, x: torch.Tensor, num_classes: int, chunk: int, *per_class: torch.Tensor):
    """``fn(x, *per_class)`` for maps with the class axis folded into the batch, ``(B*N, ...)``
    rows ordered image-major, computed ``chunk`` classes at a time: every chunk holds the same
    classes of every image, so ``fn`` may repeat per-image tensors by ``rows // B`` as usual.
    ``fn`` must treat rows independently; the result equals ``fn(x, *per_class)``. ``chunk`` 0 or
    >= ``num_classes``: one call. Returns (B*N, ...) in ``fn``'s output dtype and memory order."""
    if not chunk or chunk >= num_classes:
        return fn(x, *per_class)
    b = x.shape[0] // num_classes
    out = None
    for s in range(0, num_classes, chunk):
        e = min(s + chunk, num_classes)

        def rows(t):
            return t.view(b, num_classes, *t.shape[1:])[:, s:e].flatten(0, 1)

        y = fn(rows(x), *(rows(t) for t in per_class))
        if out is None:
            cl = y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
            out = torch.empty((b * num_classes, *y.shape[1:]), dtype=y.dtype, device=y.device,
                              memory_format=torch.channels_last if cl else torch.contiguous_format)
        out.view(b, num_classes, *y.shape[1:])[:, s:e] = y.view(b, e - s, *y.shape[1:])
    return out
