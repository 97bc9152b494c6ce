"""A kernel launch as data, so the same arguments can run the kernel or compile it ahead of time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


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

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options)

    def tensors(self) -> list[torch.Tensor]:
        return [a for a in self.args if isinstance(a, torch.Tensor)]
