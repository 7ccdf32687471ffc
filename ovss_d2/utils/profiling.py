"""Profiling aids: counting the operators that make the host wait for the device."""
import torch


class HostSyncCounter:
    """Counts, inside its ``with`` block, the operators that make the host wait for the device
    (on an accelerator; on the CPU they are merely counted, so tests can check the forward
    device-independently): data-dependent output shapes (``nonzero``, boolean-mask indexing,
    ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``), scalar reads
    (``.item()``, ``float(t)``, ``bool(t)``), tensors built from Python data (``torch.tensor([...])``:
    a host-to-device copy on an accelerator) and copies between devices. ``.tolist()`` bypasses
    the dispatcher and is not seen. ``counts``: operator name -> calls."""

    SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::masked_select",
                "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::lift_fresh")

    def __init__(self):
        self.counts = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _record(self, func, args, kwargs) -> None:
        name = func._schema.name
        hit = name in self.SYNC_OPS
        if name == "aten::index" and len(args) > 1:
            hit = any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ())
        elif name == "aten::repeat_interleave":  # tensor repeats: the output size is read from them
            hit = func._overloadname in ("Tensor", "self_Tensor") and (kwargs or {}).get("output_size") is None
        elif name in ("aten::_to_copy", "aten::copy_") and args and isinstance(args[0], torch.Tensor):
            other = (kwargs or {}).get("device") if name == "aten::_to_copy" else (
                args[1].device if len(args) > 1 and isinstance(args[1], torch.Tensor) else None)
            hit = other is not None and torch.device(other) != args[0].device
        if hit:
            self.counts[name] = self.counts.get(name, 0) + 1

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter._record(func, args, kwargs)
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
