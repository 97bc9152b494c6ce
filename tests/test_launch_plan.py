"""LaunchPlan's bookkeeping: a replay points every launch at the new call's tensors.

On the CPU a stand-in kernel records what the replay hands Triton's launcher; on the GPU the real
replay path runs (second calls of the same signature) and is checked against the emulation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import fp8attn
from fp8attn.api import _PLANS, _replay_key
from fp8attn.fp8 import quantize_per_head, to_e4m3
from fp8attn.kernels import launch as launch_module
from fp8attn.kernels.attention_fwd import KEY_COUNT_ARGUMENTS
from fp8attn.kernels.launch import Launch, LaunchPlan
from fp8attn.kernels.prequantized_layout import PREQUANTIZED_LAYOUT
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE
from fp8attn.reference import attention_emulated, emulate, prequantized_layout_emulated
from tests.conftest import HAS_CUDA, INTERPRETED, make_qkv


class _RecordingKernel:
    """Stands in for a JIT function and its compiled kernel: records every launcher call."""

    __name__ = "recording_kernel"

    def __init__(self, unspecialized: tuple[str, ...] = ()) -> None:
        self.arg_names = ["x", "y", "out", "workspace_part", "n", "BLOCK"]
        self.params = [SimpleNamespace(do_not_specialize=name in unspecialized) for name in self.arg_names]
        self.calls: list[tuple] = []
        self.function, self.packed_metadata = "function", "metadata"

    def warmup(self, *args, grid, **kwargs):
        return self

    def _init_handles(self) -> None:
        pass

    def run(self, *args) -> None:
        self.calls.append(args)


def test_replay_points_launches_at_the_new_tensors(monkeypatch):
    monkeypatch.setattr(launch_module, "_current_stream", lambda device: 7)
    kernel = _RecordingKernel()
    x = torch.zeros(4)
    out, workspace = torch.empty(4), torch.empty(64, dtype=torch.uint8)
    constant = torch.ones(2)
    launches = [
        Launch(kernel, (3,), (x, x, out, workspace[16:32], 5), {"BLOCK": 8}, {"num_warps": 4}),
        Launch(kernel, (2, 2), (constant, x, out, workspace[48:], 6), {"BLOCK": 16}, {"num_warps": 4},
               constants=(constant,)),
    ]
    plan = LaunchPlan(launches, inputs=(x, torch.zeros(1)), allocated=(out, workspace))

    a, b = torch.randn(4), torch.randn(1)  # the same signature, fresh tensors
    new_out, new_workspace = plan.run((a, b))
    assert new_out.shape == out.shape and new_workspace.shape == workspace.shape
    assert new_out.data_ptr() != out.data_ptr()
    base = new_workspace.data_ptr()
    first, second = kernel.calls
    assert first[:4] == (3, 1, 1, 7) and second[:4] == (2, 2, 1, 7)
    assert first[9:] == (a.data_ptr(), a.data_ptr(), new_out.data_ptr(), base + 16, 5, 8)
    assert second[9] is constant and second[10:] == (a.data_ptr(), new_out.data_ptr(), base + 48, 6, 16)


def test_replay_rebuilds_views_of_its_buffers_only_when_asked(monkeypatch):
    """lse is carved from the workspace: a replay hands it back at the same offset of the new workspace."""
    monkeypatch.setattr(launch_module, "_current_stream", lambda device: 0)
    kernel = _RecordingKernel()
    x = torch.zeros(4)
    out, workspace = torch.empty(4), torch.empty(64, dtype=torch.uint8)
    lse = workspace[32:48].view(torch.float32).view(2, 2)
    plan = LaunchPlan([Launch(kernel, (1,), (x, x, out, lse, 1), {"BLOCK": 8}, {})],
                      inputs=(x,), allocated=(out, workspace), views=(lse,))
    assert len(plan.run((torch.zeros(4),))) == 2
    _, new_workspace, new_lse = plan.run((torch.zeros(4),), views=True)
    assert new_lse.shape == (2, 2) and new_lse.dtype == torch.float32
    assert new_lse.data_ptr() == new_workspace.data_ptr() + 32 == kernel.calls[-1][12]
    with pytest.raises(ValueError, match="contiguous views of its allocated buffers"):
        LaunchPlan([], inputs=(x,), allocated=(out, workspace), views=(torch.empty(2),))


def test_replay_passes_each_runtime_int_anew(monkeypatch):
    """A plan built with runtime ints takes their values per replay (a KV cache's length); the rest stay recorded."""
    monkeypatch.setattr(launch_module, "_current_stream", lambda device: 0)
    kernel = _RecordingKernel(unspecialized=("n",))
    x, out, workspace = torch.zeros(4), torch.empty(4), torch.empty(16, dtype=torch.uint8)
    plan = LaunchPlan([Launch(kernel, (1,), (x, x, out, workspace, 5), {"BLOCK": 8}, {})],
                      inputs=(x,), allocated=(out, workspace), runtime_ints=("n", "absent"))
    plan.run((x,), runtime_ints={"n": 77})
    plan.run((x,), runtime_ints={"n": 3})
    assert [call[-2:] for call in kernel.calls] == [(77, 8), (3, 8)]


def test_plan_refuses_a_runtime_int_the_kernel_specializes_on():
    """Triton compiles a specialized integer's divisibility (or value 1) into the kernel: replays must not change it."""
    kernel = _RecordingKernel()
    x, out, workspace = torch.zeros(4), torch.empty(4), torch.empty(16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="recording_kernel specializes on n"):
        LaunchPlan([Launch(kernel, (1,), (x, x, out, workspace, 5), {"BLOCK": 8}, {})],
                   inputs=(x,), allocated=(out, workspace), runtime_ints=("n",))


def test_attention_kernel_does_not_specialize_on_its_key_count_arguments():
    """What LaunchPlan checks before a KV cache's plan takes a new length each call, on the compiled kernel's
    parameters (a child process: Triton's interpreter, which CPU runs use, has no such parameters)."""
    check = ("from fp8attn.kernels.attention_fwd import KEY_COUNT_ARGUMENTS, _fp8_attention_fwd_kernel as k; "
             "print([k.params[k.arg_names.index(n)].do_not_specialize for n in KEY_COUNT_ARGUMENTS])")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str([True] * len(KEY_COUNT_ARGUMENTS)), result.stdout


def test_inputs_are_matched_by_identity_not_storage(monkeypatch):
    """q is k in the recorded call: a replay with distinct q and k must not reuse q's pointer for k."""
    monkeypatch.setattr(launch_module, "_current_stream", lambda device: 0)
    kernel = _RecordingKernel()
    x = torch.zeros(4)
    k_view = x[:]  # a different tensor object on the same storage
    out, workspace = torch.empty(4), torch.empty(16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="argument 1 of recording_kernel"):
        LaunchPlan([Launch(kernel, (1,), (x, k_view, out, workspace, 1), {"BLOCK": 8}, {})],
                   inputs=(x,), allocated=(out, workspace))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
@pytest.mark.parametrize("recipe", ["e4m3", "int8-hadamard-vsmooth"])
def test_second_call_replays_and_matches_emulation(gen, poisoned_allocations, recipe):
    shape = (2, 2, 2, 333, 333, 64)
    _PLANS.clear()
    # Calls 0-1: record, replay. Calls 2-3: q is k, an aliasing pattern of its own: record a second
    # plan, then replay it (a plan recorded with q, k, v apart must not serve q is k, nor the reverse).
    for call in range(4):
        q, k, v = make_qkv(gen, shape, device="cuda", kind="k_offset")
        if call >= 2:
            q = k
        out = fp8attn.attention(q, k, v, causal=True, recipe=recipe)
        assert len(_PLANS) == (1 if call < 2 else 2)
        want = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=fp8attn.recipes()[recipe], causal=True)
        err = compare(out.cpu(), want).rel_l2
        assert torch.isfinite(out).all() and err < 1e-2, f"call {call}: rel-L2 {err:.2e} against the emulation"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
def test_split_key_call_replays_its_partial_buffers_and_merge(gen, poisoned_allocations):
    """Decoding splits the keys (partial results carved from the workspace, a merge launch): a replay
    allocates and points all of it again."""
    _PLANS.clear()
    for call in range(3):
        q, k, v = make_qkv(gen, (1, 8, 2, 1, 3000, 128), device="cuda")
        out = fp8attn.attention(q, k, v)
        assert len(_PLANS) == 1
        want = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=fp8attn.recipes()["int8-hadamard-vsmooth"])
        err = compare(out.cpu(), want).rel_l2
        assert torch.isfinite(out).all() and err < 1e-2, f"call {call}: rel-L2 {err:.2e} against the emulation"


def test_replay_steps_aside_for_launch_hooks(monkeypatch):
    """A profiler's launch hook (proton, say) must see every launch: replays then use Triton's path."""
    monkeypatch.setattr(launch_module.knobs.runtime, "interpret", False)
    cuda = torch.device("cuda", 0)
    assert LaunchPlan.usable(cuda) and not LaunchPlan.usable(torch.device("cpu"))
    hooks = launch_module.knobs.runtime.launch_enter_hook
    hook = lambda metadata: None  # noqa: E731
    hooks.add(hook)
    try:
        assert not LaunchPlan.usable(cuda)
    finally:
        hooks.remove(hook)


def test_replay_key_tells_argument_types_apart(monkeypatch):
    """A plan recorded for causal=True must not serve causal=1, which the checks reject."""
    monkeypatch.setattr(LaunchPlan, "usable", staticmethod(lambda device: True))
    q = torch.zeros(1, 2, 8, 64)
    assert _replay_key((q, q, q), True, None, None) == _replay_key((q, q, q), True, None, None)
    assert _replay_key((q, q, q), True, None, None) != _replay_key((q, q, q), 1, None, None)
    assert _replay_key((q, q, q), True, 0.5, None) != _replay_key((q, q, q), True, 0.5, "e4m3")
    assert _replay_key((q, q[:, :, ::2], q), True, None, None) != _replay_key((q, q[:, :, :4], q), True, None, None)
    descale = torch.ones(2, 2)
    assert _replay_key((q, q, q), descale, True) != _replay_key((q, q, q), descale.t(), True)  # a tensor flag's strides
    assert _replay_key((q, q, q), 0.5, True) != _replay_key((q, q, q), 0.25, True)  # a number flag's value
    assert _replay_key((q, q, q), True, None, ["e4m3"]) is None  # unhashable: the checks report it
    assert _replay_key((q, q, q), torch.nn.Parameter(descale), True) is None  # a tensor subclass: not replayed
    assert _replay_key((q, q, q), descale.requires_grad_(), True) is None  # autograd must see the call
    assert _replay_key((q.requires_grad_(), q, q), True, None, None) is None


def test_replay_key_tells_shared_inputs_apart(monkeypatch):
    """A plan records "input 0" for every argument that was q: recorded with q is k is v it must not
    serve separate tensors (their data would all be read from q)."""
    monkeypatch.setattr(LaunchPlan, "usable", staticmethod(lambda device: True))
    q, k = torch.zeros(1, 2, 8, 64), torch.zeros(1, 2, 8, 64)
    d1, d2 = torch.ones(1, 2), torch.ones(1, 2)
    assert _replay_key((q, q, q), True) != _replay_key((q, k, k), True) != _replay_key((q, k, q.clone()), True)
    assert _replay_key((q, k, k), d1, d1) != _replay_key((q, k, k), d1, d2)  # one descale tensor for k and v
    assert _replay_key((q, k, k.clone()), d1, d2) == _replay_key((k, q, q.clone()), d2, d1)  # same pattern, same key


def _per_head(descale: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A descale as the ``(B, H)`` float32 CUDA tensor the emulation takes."""
    d = torch.as_tensor(descale, dtype=torch.float32).cuda()
    return d if d.dim() == 2 else d.reshape(()).expand(*x.shape[:2])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
@pytest.mark.parametrize("descale", ["tensor", "per-tensor tensor", "cpu tensor", "number"])
@pytest.mark.parametrize("head_dim", [64, 96])
def test_prequantized_second_call_replays_and_matches_emulation(gen, poisoned_allocations, descale, head_dim):
    """Replays of attention_prequantized: new data and new descales each call, numbers included (one plan for
    any value), per-tensor (1,) tensors (expanded to (B, H) by the checks) and descales on the CPU (copied
    each call); D=96 replays the Q and K copies."""
    shape = (2, 4, 2, 200, 333, head_dim)
    _PLANS.clear()
    for call in range(3):
        q, k, v = make_qkv(gen, shape, device="cuda")
        if descale == "number":
            scales = [float(2 ** (call - 4))] * 3
            q8, k8, v8 = (to_e4m3(x.float() / s) for x, s in zip((q, k, v), scales, strict=True))
            descales = scales
        elif descale == "per-tensor tensor":
            descales = [x.float().abs().amax().reshape(1) / 448 for x in (q, k, v)]
            q8, k8, v8 = (to_e4m3(x.float() / s) for x, s in zip((q, k, v), descales, strict=True))
        else:
            (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v))
            descales = [qd, kd, vd] if descale == "tensor" else [qd.cpu(), kd.cpu(), vd.cpu()]
        out = fp8attn.attention_prequantized(q8, k8, v8, *descales, causal=True, out_dtype=torch.float16)
        assert len(_PLANS) == 1
        as_tensors = [_per_head(d, x) for d, x in zip(descales, (q8, k8, v8), strict=True)]
        layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, *as_tensors)))
        want = attention_emulated(layout, causal=True, scale=head_dim**-0.5, p_scale=PREQUANTIZED_LAYOUT.p_multiplier)
        err = compare(out.cpu(), want).rel_l2
        assert torch.isfinite(out).all() and err < 1e-2, f"call {call}: rel-L2 {err:.2e} against the emulation"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
def test_prequantized_with_v_mean_replays_its_own_plan(gen, poisoned_allocations):
    """A call with ``v_mean`` records a plan of its own (the layout copies the mean); its replays read each
    call's new mean, and a call without one does not take that plan."""
    shape = (1, 2, 2, 100, 300, 96)
    _PLANS.clear()
    for call in range(3):
        q, k, v = make_qkv(gen, shape, device="cuda", kind="v_mean")
        v_mean = v.float().mean(dim=2)
        (q8, qd), (k8, kd), (v8, vd) = (quantize_per_head(x) for x in (q, k, v - v_mean[:, :, None, :]))
        out = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, v_mean=v_mean, out_dtype=torch.float16)
        assert len(_PLANS) == 1
        layout = prequantized_layout_emulated(*(x.cpu() for x in (q8, k8, v8, qd, kd, vd, v_mean)))
        want = attention_emulated(layout, causal=False, scale=96**-0.5, p_scale=PREQUANTIZED_LAYOUT.p_multiplier)
        err = compare(out.cpu(), want).rel_l2
        assert torch.isfinite(out).all() and err < 1e-3, f"call {call}: rel-L2 {err:.2e} against the emulation"
    without = fp8attn.attention_prequantized(q8, k8, v8, qd, kd, vd, out_dtype=torch.float16)
    assert len(_PLANS) == 2
    torch.testing.assert_close(without.float() + v_mean[:, :, None, :], out.float(), rtol=0, atol=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="no CUDA GPU (compiled-kernel run)")
def test_plan_recorded_with_q_is_k_is_v_does_not_serve_separate_inputs(gen):
    shape = (1, 2, 2, 100, 100, 64)
    _PLANS.clear()
    x = make_qkv(gen, shape, device="cuda")[0]
    fp8attn.attention(x, x, x)  # recorded with one tensor for q, k and v
    q, k, v = make_qkv(gen, shape, device="cuda", kind="k_offset")
    out = fp8attn.attention(q, k, v)
    assert len(_PLANS) == 2
    want = emulate(q.cpu(), k.cpu(), v.cpu(), recipe=DEFAULT_RECIPE)
    assert compare(out.cpu(), want).rel_l2 < 1e-2
