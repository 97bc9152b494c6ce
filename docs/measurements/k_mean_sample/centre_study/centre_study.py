"""Which per-channel centre to subtract from K: the recipe's error with five choices (CPU, float64 emulation).

A one-off study for perf-notes section 47, kept with its output. It replaces the emulation's
``fp8attn.reference._k_smoothing_mean`` (the one definition of what K smoothing subtracts) by each centre in
turn and prints the rel-L2 against float64 of the default recipe and ``e4m3`` on four synthetic kinds
(B1 H4 S1024 D128) and SmolLM2-135M's 30 layers at 1024 tokens, each centre's error over the sample mean's.

    python docs/measurements/k_mean_sample/centre_study/centre_study.py > .../centre_study.txt
"""

import math

import torch

import fp8attn.reference as reference
from fp8attn.inputs import synthetic_qkv
from fp8attn.integrations import transformers as fp8hf
from fp8attn.metrics import compare
from fp8attn.quantize import k_mean_positions
from fp8attn.real_models import corpus, load_smollm2
from fp8attn.recipe import RECIPES


def sample(k: torch.Tensor) -> torch.Tensor:
    return k[:, :, k_mean_positions(k.shape[2])].double()


CENTRES = {
    "sample_mean": lambda k: sample(k).mean(dim=2, keepdim=True),
    "full_mean": lambda k: k.double().mean(dim=2, keepdim=True),
    "sample_mid": lambda k: (sample(k).amax(dim=2, keepdim=True) + sample(k).amin(dim=2, keepdim=True)) / 2,
    "full_mid": lambda k: (k.double().amax(dim=2, keepdim=True) + k.double().amin(dim=2, keepdim=True)) / 2,
    "sample_median": lambda k: sample(k).median(dim=2, keepdim=True).values,
}
RECIPE_NAMES = ("int8-hadamard-vsmooth", "e4m3")


def main() -> None:
    def errors(q, k, v, causal, scale):
        truth = reference.exact(q, k, v, causal=causal, scale=scale)
        out = {}
        for name in RECIPE_NAMES:
            for centre, fn in CENTRES.items():
                reference._k_smoothing_mean = fn  # quantize_emulated and emulate look it up when called
                got = reference.emulate(q, k, v, recipe=RECIPES[name], causal=causal, scale=scale)
                out[name, centre] = compare(got, truth).rel_l2
        return out

    rows = []
    for kind in ("randn", "outliers", "k_offset", "sharp"):
        gen = torch.Generator().manual_seed(0)
        q, k, v = synthetic_qkv(kind, (1, 4, 4, 1024, 1024, 128), gen, dtype=torch.bfloat16)
        rows.append((kind, errors(q, k, v, False, 128 ** -0.5)))
    model, tok = load_smollm2()
    ids = tok(corpus()[: 16 * 1024], return_tensors="pt").input_ids[:, :1024]
    with torch.no_grad(), fp8hf.capture_qkv(model) as calls:
        model(ids, use_cache=False)
    for call in calls:
        rows.append((f"L{call.layer}", errors(call.q, call.k, call.v, call.causal, call.scale)))
    for label, r in rows:
        print(label, {f"{a[:4]}/{b}": round(x, 4) for (a, b), x in r.items()})
    for name in RECIPE_NAMES:
        for centre in CENTRES:
            syn = [r[name, centre] / r[name, "sample_mean"] for label, r in rows if not label.startswith("L")]
            real = [r[name, centre] / r[name, "sample_mean"] for label, r in rows if label.startswith("L")]
            geomean = math.exp(sum(map(math.log, real)) / len(real))
            print(f"{name:22s} {centre:14s} synthetic {min(syn):.3f}-{max(syn):.3f}  SmolLM2 layers geomean "
                  f"{geomean:.3f} min {min(real):.3f} max {max(real):.3f}")


if __name__ == "__main__":
    main()
