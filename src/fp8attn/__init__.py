"""fp8attn: accurate FP8 attention for PyTorch on NVIDIA Hopper, written in Triton.

On a machine without a CUDA GPU, importing fp8attn before Triton switches Triton to its CPU
interpreter (``TRITON_INTERPRET=1``) unless the variable is already set. Triton reads it when it is
first imported, so a program that imports Triton first must set the variable itself. Under the
interpreter fp8attn also installs faithful float→fp8 casts (see :mod:`fp8attn._interpreter`).
"""

import os as _os
import sys as _sys

import torch as _torch

if "TRITON_INTERPRET" not in _os.environ and "triton" not in _sys.modules and not _torch.cuda.is_available():
    _os.environ["TRITON_INTERPRET"] = "1"

from triton import knobs as _knobs

if _knobs.runtime.interpret:
    from fp8attn import _interpreter

    _interpreter.install()

from fp8attn.api import attention, attention_prequantized
from fp8attn.kv_cache import PrequantizedKVCache
from fp8attn.metrics import ErrorReport, compare
from fp8attn.recipe import Recipe, recipes

__all__ = ["ErrorReport", "PrequantizedKVCache", "Recipe", "attention", "attention_prequantized", "compare", "recipes"]
__version__ = "0.1.0"
