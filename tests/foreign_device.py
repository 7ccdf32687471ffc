"""A stand-in for an accelerator on a machine without one, for the device-hygiene tests.

``ForeignDevice`` puts a model and its inputs on a device that is not the CPU: every tensor
becomes a ``ForeignTensor``, whose ``.device`` is ``meta`` (a device torch offers everywhere, with
no hardware and no data) while it holds a real CPU tensor and computes on it, so a whole forward,
loss and backward run with real numbers. What CUDA refuses is refused here, with the line of
code that did it in the traceback:

- an operator that mixes a foreign tensor with a CPU tensor of one or more dimensions (what
  ``torch.zeros(n)`` without ``device=`` gives): "Expected all tensors to be on the same device"
  on a GPU. A 0-dim CPU tensor is accepted, as CUDA accepts it (a scalar argument of the kernel);
- ``.numpy()`` of a foreign tensor (CUDA: "can't convert cuda:0 device type tensor to numpy").

Stricter than CUDA, because each is a copy between host and device that the docs say a forward
does not make: every copy of device data to the host (``.cpu()``, ``.to("cpu")``, ``.tolist()``,
copying into a CPU tensor) and every CPU index tensor used on device data (CUDA copies it over
without a word) must happen inside a function of the allow-list the test passes, as
``{name: (file path suffix, function name)}``; outside it, it is refused. ``.item()`` and the
other scalar reads are allowed (they synchronise but copy no tensor; ``HostSyncCounter`` in
``ovss_d2.utils.profiling`` counts them).

Tensors that never meet the device are left alone: CPU-side work on plain CPU tensors is no
device bug. Every refusal is also kept in ``violations``, so that code which catches exceptions
(e.g. a fallback) cannot hide one from the test.
"""
import sys
from typing import Dict, List, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

FOREIGN = torch.device("meta")
CPU = torch.device("cpu")
_aten = torch.ops.aten
_COPIES_TO_HOST = (_aten._to_copy.default, _aten.copy_.default)
_INDEXING = (_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default, _aten._index_put_impl_.default)


class DeviceHygieneError(RuntimeError):
    pass


class _State:
    """The active ``ForeignDevice`` (class-level so that autograd's own threads see it too)."""

    active = None


def _is_foreign_device(device) -> bool:
    return device is not None and torch.device(device) == FOREIGN


class ForeignTensor(torch.Tensor):
    """A tensor whose device is ``FOREIGN`` and whose values are ``elem``, a plain CPU tensor."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=FOREIGN, requires_grad=elem.requires_grad)
        out.elem = elem
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self):
        return f"ForeignTensor({self.elem!r})"

    def tolist(self):
        _check_host_copy("tolist", self)
        return self.elem.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert meta device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    __array__ = numpy

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        _check_mixing(func, flat)
        to_host = ((func is _aten._to_copy.default and kwargs.get("device") is not None
                    and torch.device(kwargs["device"]) == CPU)
                   or (func is _aten.copy_.default and not isinstance(args[0], ForeignTensor)))
        if to_host:
            _check_host_copy(str(func), *[t for t in flat if isinstance(t, ForeignTensor)])
        unwrap_args, unwrap_kwargs = tree_map(_unwrap, args), tree_map(_unwrap, kwargs)
        if _is_foreign_device(unwrap_kwargs.get("device")):
            unwrap_kwargs["device"] = CPU
        out = func(*unwrap_args, **unwrap_kwargs)
        if to_host:
            return out
        # in-place and out= operators return their argument: give back the same wrapper
        same = {id(t.elem): t for t in flat if isinstance(t, ForeignTensor)}
        return tree_map(lambda t: same[id(t)] if id(t) in same else ForeignTensor(t) if isinstance(t, torch.Tensor)
                        else t, out)


def _unwrap(t):
    return t.elem if isinstance(t, ForeignTensor) else t


def _caller() -> str:
    """The innermost frame of ovss-d2 or the tests (where the offending line is)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if ("/ovss_d2/" in name or "/tests/" in name) and not name.endswith("/foreign_device.py"):
            return f"{name}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "(no ovss-d2 frame)"


def _refuse(message: str):
    state = _State.active
    message = f"{message} [at {_caller()}]"
    if state is not None:
        state.violations.append(message)
    raise DeviceHygieneError(message)


def _check_mixing(func, flat) -> None:
    """CUDA's rule: no CPU tensor of >= 1 dimension beside a device tensor (stricter: not even as an
    index, see the module docstring); copies between the two are what ``copy_`` / ``_to_copy`` do."""
    if not any(isinstance(t, ForeignTensor) for t in flat) or func in _COPIES_TO_HOST:
        return
    for t in flat:
        if isinstance(t, torch.Tensor) and not isinstance(t, ForeignTensor):
            if t.device == FOREIGN:
                _refuse(f"{func}: a real meta tensor {tuple(t.shape)} (made outside the ForeignDevice block)")
            if t.dim() == 0:
                continue
            if func in _INDEXING and not t.is_floating_point():
                _check_host_copy(f"{func} with a CPU index tensor {tuple(t.shape)}", t)
                continue
            _refuse(f"Expected all tensors to be on the same device: {func} got a CPU tensor {tuple(t.shape)} "
                    f"{t.dtype} beside tensors on {FOREIGN} (made without device=?)")


def _check_host_copy(what: str, *tensors) -> None:
    state = _State.active
    if state is None:
        return
    name = state.allowed_here()
    shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
    if name is None:
        _refuse(f"host copy outside the allow-list: {what} of {shapes}")
    state.host_copies[name] = state.host_copies.get(name, 0) + 1


_FROM_DATA = (torch.tensor, torch.as_tensor, torch.asarray)


def _index_to_device(index):
    """Python lists in an index become device tensors, as CUDA's indexing copies them over."""
    if isinstance(index, tuple):
        return tuple(_index_to_device(i) for i in index)
    if isinstance(index, list):
        return ForeignTensor(torch.tensor(index))
    return index


class _FromPythonData(TorchFunctionMode):
    """What torch builds from Python data below the dispatcher, with Python modes off (so a
    ``TorchDispatchMode`` only sees the empty meta tensor): ``torch.tensor(data, device=...)`` and
    the lists in ``t[[0, 2]]``. Built on the CPU and wrapped, as CUDA copies them to the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FROM_DATA and _is_foreign_device(kwargs.get("device")):
            return ForeignTensor(func(*args, **dict(kwargs, device=CPU)))
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], ForeignTensor):
            args = (args[0], _index_to_device(args[1]), *args[2:])
        return func(*args, **kwargs)


_autocast_init = torch.amp.autocast_mode.autocast.__init__


def _autocast_on_foreign_device(self, device_type, *args, **kwargs):
    """torch.autocast has no meta device type ("unsupported scalarType", even disabled): the
    foreign device autocasts as the CPU does."""
    return _autocast_init(self, "cpu" if device_type == FOREIGN.type else device_type, *args, **kwargs)


class ForeignDevice(TorchDispatchMode):
    """``with ForeignDevice(allow) as dev:`` ... ``dev.put(model)``, ``x.to(dev.device)``: see the
    module docstring. ``allow``: {name: (file path suffix, function name)} of the functions that may
    copy device data to the host. ``host_copies``: allow-list name -> copies made; ``violations``:
    every refusal."""

    device = FOREIGN

    def __init__(self, allow: Dict[str, Tuple[str, str]] = None):
        super().__init__()
        self.allow = dict(allow or {})
        self.host_copies: Dict[str, int] = {}
        self.violations: List[str] = []

    def allowed_here(self):
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename.replace("\\", "/")
            for name, (suffix, function) in self.allow.items():
                if path.endswith(suffix) and frame.f_code.co_name == function:
                    return name
            frame = frame.f_back
        return None

    def __enter__(self):
        self._outer, _State.active = _State.active, self
        self._functions = _FromPythonData()
        self._functions.__enter__()
        torch.amp.autocast_mode.autocast.__init__ = _autocast_on_foreign_device
        return super().__enter__()

    def __exit__(self, *exc):
        _State.active = self._outer
        torch.amp.autocast_mode.autocast.__init__ = _autocast_init
        self._functions.__exit__(*exc)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        if any(isinstance(t, ForeignTensor) for t in flat):
            return func(*args, **kwargs)  # the wrapper's own rules (this mode is off while it runs)
        if _is_foreign_device(kwargs.get("device")):  # a factory (torch.zeros(..., device=x.device)) or .to(device)
            out = func(*args, **dict(kwargs, device=CPU))
            return tree_map(lambda t: ForeignTensor(t) if isinstance(t, torch.Tensor) else t, out)
        return func(*args, **kwargs)

    def put(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module's parameters and buffers onto the foreign device (``module.to``)."""
        return module.to(FOREIGN)
