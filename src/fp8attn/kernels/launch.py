"""Kernel launches as data, and a replay path that skips Triton's per-call argument binding.

``kernel[grid](...)`` re-derives the argument specialization of every launch (about 50 µs a launch
for the forward kernel's ~40 arguments on an H100 host). A :class:`LaunchPlan` records, once per
call signature, the compiled kernels and which argument is a pointer into which caller tensor, and
replays them with the C launcher directly: a call then costs the allocations and one launcher call
per kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from triton import knobs
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime import driver


@dataclass(frozen=True)
class Launch:
    """``kernel[grid](*args, **constexprs, **options)``, kept as data.

    :func:`fp8attn.kernel_report.compile_offline` compiles exactly this launch for a GPU
    architecture without needing the GPU, so its SASS can be read on any machine.
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any]
    options: dict[str, int]
    constants: tuple[torch.Tensor, ...] = ()  # tensor arguments that outlive every call (cached matrices)

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options)

    def compiled(self) -> Any:
        """The compiled kernel this launch runs (compiling it if it has not run yet)."""
        kernel = self.kernel.warmup(*self.args, grid=self.grid, **self.constexprs, **self.options)
        return kernel.result() if hasattr(kernel, "result") else kernel

    def bound_values(self) -> list[Any]:
        """Every parameter's value in the kernel's order, as Triton's launcher takes them (a Gluon
        kernel's ``num_warps`` parameter is the launch option)."""
        named = {**self.options, **self.constexprs}
        return [*self.args, *(named[name] for name in self.kernel.arg_names[len(self.args):])]


@dataclass(frozen=True)
class _Replay:
    kernel: Any  # triton.compiler.CompiledKernel
    grid: tuple[int, int, int]
    values: tuple[Any, ...]  # the launch's parameter values, pointers replaced below
    pointers: tuple[tuple[int, int, int], ...]  # (parameter index, tensor index, byte offset)
    runtime_ints: tuple[tuple[int, str], ...]  # (parameter index, name) of integers set per replay


class LaunchPlan:
    """Launches recorded on one call, replayed on later calls with the same signature.

    Every tensor argument of the launches must be one of the call's ``inputs`` (the very object), a
    view of one of the buffers the call ``allocated`` (outputs, a workspace), or one of its launch's
    ``constants`` (tensors that outlive every call, such as a cached matrix), which stay in place.
    Inputs are matched by identity, not by storage: an argument is "input j", the first input that is
    the same object, so inputs that are views of one storage (q is k's view) replay correctly. A replay
    allocates buffers of the recorded shapes and dtypes and points each launch at them.

    The caller's key must pin everything Triton specializes on besides pointers: every integer
    argument (shapes, strides) and the 16-byte alignment of the input pointers (allocated buffers
    come from PyTorch's allocator, which aligns them to 512 bytes); and which inputs are one and the
    same object, since a plan recorded with ``q is k`` reads both from input 0.

    A TMA descriptor argument (a Gluon kernel's) is matched by its base tensor the same way and rebuilt
    around the new address on each replay, with the recorded shape, strides, block and layout.

    ``views`` are contiguous views of the allocated buffers that a caller may want back (an output
    carved from a workspace); a replay rebuilds them only when asked.

    ``runtime_ints`` names integer parameters whose values each replay passes anew (a KV cache's length:
    one plan serves every length). Only parameters a kernel does not specialize on qualify
    (``do_not_specialize``), as the compiled kernel must not depend on their values; a launch of a
    kernel that specializes on one is refused.
    """

    def __init__(self, launches: Sequence[Launch], inputs: Sequence[torch.Tensor],
                 allocated: Sequence[torch.Tensor], views: Sequence[torch.Tensor] = (),
                 runtime_ints: Sequence[str] = ()) -> None:
        tensors = [*inputs, *allocated]
        starts = [t.data_ptr() for t in tensors]
        replays = []
        for launch in launches:
            keep = {t.data_ptr() for t in launch.constants}
            kernel = launch.compiled()
            kernel._init_handles()
            values = launch.bound_values()
            pointers = []
            for i, value in enumerate(values):
                tensor = value.base if isinstance(value, TensorDescriptor) else value
                if not isinstance(tensor, torch.Tensor) or tensor.data_ptr() in keep:
                    continue
                owner = next((j for j, t in enumerate(inputs) if tensor is t), None)
                if owner is None:
                    owner = next((len(inputs) + j for j, t in enumerate(allocated) if _same_storage(tensor, t)), None)
                if owner is None:
                    raise ValueError(f"argument {i} of {launch.kernel.__name__} is not a view of the plan's tensors")
                pointers.append((i, owner, tensor.data_ptr() - starts[owner]))
                # A TMA descriptor is rebuilt around each replay's address; it keeps no tensor alive.
                values[i] = None if tensor is value else dataclasses.replace(
                    value, base=_Address(tensor.data_ptr(), tensor.dtype))
            grid = (*launch.grid, 1, 1)[:3]
            replays.append(_Replay(kernel, grid, tuple(values), tuple(pointers), _runtime_ints(launch, runtime_ints)))
        self._replays = tuple(replays)
        self._device = inputs[0].device
        self._buffers = tuple((tuple(t.shape), t.dtype) for t in allocated)
        self._views = tuple(_locate_view(view, allocated) for view in views)

    def run(self, inputs: Sequence[torch.Tensor], views: bool = False,
            runtime_ints: Mapping[str, int] | None = None) -> tuple[torch.Tensor, ...]:
        """Allocate the buffers, launch every kernel on the current stream and return the buffers
        (followed, with ``views``, by the recorded views rebuilt on them). ``runtime_ints`` gives the value
        of each integer the plan was built to take per replay."""
        device = self._device
        buffers = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in self._buffers]
        starts = [t.data_ptr() for t in inputs] + [t.data_ptr() for t in buffers]
        stream = _current_stream(device)
        for replay in self._replays:
            values = list(replay.values)
            for i, owner, offset in replay.pointers:
                desc = values[i]
                if desc is None:
                    values[i] = starts[owner] + offset
                else:
                    values[i] = dataclasses.replace(desc, base=_Address(starts[owner] + offset, desc.base.dtype))
            for i, name in replay.runtime_ints:
                values[i] = runtime_ints[name]
            kernel = replay.kernel
            kernel.run(*replay.grid, stream, kernel.function, kernel.packed_metadata, None, None, None, *values)
        if views:
            buffers += [buffers[owner].view(torch.uint8)[start:start + size].view(dtype).view(shape)
                        for owner, start, size, shape, dtype in self._views]
        return tuple(buffers)

    @staticmethod
    def usable(device: torch.device) -> bool:
        """Replays run compiled CUDA kernels, and step aside for launch hooks (profilers)."""
        return (device.type == "cuda" and not knobs.runtime.interpret
                and _idle(knobs.runtime.launch_enter_hook) and _idle(knobs.runtime.launch_exit_hook))


@dataclass(frozen=True)
class _Address:
    """What Triton's launcher reads of a TMA descriptor's base tensor: its address and dtype."""

    address: int
    dtype: torch.dtype

    def data_ptr(self) -> int:
        return self.address


def _idle(hook: Any) -> bool:
    """No launch hook installed (Triton 3.6 keeps them in a HookChain; older versions use None)."""
    return hook is None or not getattr(hook, "calls", True)


def _runtime_ints(launch: Launch, names: Sequence[str]) -> tuple[tuple[int, str], ...]:
    """(parameter index, name) of each of ``names`` that ``launch``'s kernel takes, all unspecialized."""
    found = []
    for name in names:
        if name not in launch.kernel.arg_names:
            continue
        index = launch.kernel.arg_names.index(name)
        if not launch.kernel.params[index].do_not_specialize:
            raise ValueError(f"{launch.kernel.__name__} specializes on {name}: a replay cannot change its value")
        found.append((index, name))
    return tuple(found)


def _current_stream(device: torch.device) -> int:
    return driver.active.get_current_stream(device.index)


def _locate_view(view: torch.Tensor, allocated: Sequence[torch.Tensor]) -> tuple[int, int, int, tuple, torch.dtype]:
    """Where a contiguous view of one of the allocated buffers lies: (buffer index, byte offset into
    the buffer, bytes, shape, dtype)."""
    owner = next((j for j, t in enumerate(allocated) if _same_storage(view, t)), None)
    if owner is None or not view.is_contiguous():
        raise ValueError("a plan's views must be contiguous views of its allocated buffers")
    start = view.data_ptr() - allocated[owner].data_ptr()
    return owner, start, view.numel() * view.element_size(), tuple(view.shape), view.dtype


def _same_storage(view: torch.Tensor, base: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
