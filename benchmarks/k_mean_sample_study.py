"""K smoothed by the mean of a sample of its tokens against the mean of all of them (CPU, float64 emulation).

``Recipe.smooth_k`` subtracts one per-channel vector from every key; softmax is invariant to any such
vector, so only the quantization error depends on which. The library takes the mean of
``K_MEAN_TOKENS`` keys spread evenly over the sequence (``fp8attn.quantize.k_mean_positions``), which
spares the statistics pass K's read. This prints, per input and recipe, the emulation's relative L2 error
against float64 with that sample and with every token, on the synthetic kinds and on SmolLM2-135M's
attention inputs (RoPE keys, whose per-channel offsets turn with position), and writes them as JSON:

    python benchmarks/k_mean_sample_study.py --out docs/measurements/k_mean_sample/accuracy.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

import fp8attn.reference
from fp8attn.inputs import KINDS, synthetic_qkv
from fp8attn.integrations import transformers as fp8hf
from fp8attn.metrics import compare
from fp8attn.quantize import K_MEAN_TOKENS
from fp8attn.recipe import RECIPES
from fp8attn.reference import emulate, exact


@contextlib.contextmanager
def every_token_mean() -> Iterator[None]:
    """The emulation with K smoothed by the mean of all its tokens (the library before the sample)."""
    sample = fp8attn.reference.k_mean_positions
    fp8attn.reference.k_mean_positions = torch.arange
    try:
        yield
    finally:
        fp8attn.reference.k_mean_positions = sample


def errors(q, k, v, causal: bool, scale: float, recipes: list[str]) -> dict[str, dict[str, float]]:
    """Per recipe: rel-L2 against float64 with K smoothed by the sample's mean and by every token's."""
    truth = exact(q, k, v, causal=causal, scale=scale)
    out = {}
    for name in recipes:
        sample = compare(emulate(q, k, v, recipe=RECIPES[name], causal=causal, scale=scale), truth).rel_l2
        with every_token_mean():
            full = compare(emulate(q, k, v, recipe=RECIPES[name], causal=causal, scale=scale), truth).rel_l2
        out[name] = {"sample": sample, "every_token": full}
    return out


def smollm2_runs(tokens: int, recipes: list[str]) -> tuple[list[fp8hf.CapturedAttention], dict[str, dict]]:
    """SmolLM2-135M on ``tokens`` tokens: every layer's attention inputs, and per recipe the perplexity
    and mean KL divergence from float32 SDPA's next-token distribution with all layers' attention
    replaced by the recipe's emulation, K smoothed by the sample's mean and by every token's."""
    from fp8attn.real_models import _recipe_variant, _register, corpus, load_smollm2, perplexity

    model, tok = load_smollm2()
    ids = tok(corpus()[: 16 * tokens], return_tensors="pt").input_ids[:, :tokens]
    with torch.no_grad(), fp8hf.capture_qkv(model) as calls:
        model(ids, use_cache=False)
    _, logp_ref = perplexity(model, ids, "sdpa")
    end_to_end = {}
    for name in tqdm(recipes, desc="SmolLM2 perplexity"):
        impl = _register(name, _recipe_variant(name))
        row = {}
        for label, context in (("sample", contextlib.nullcontext), ("every_token", every_token_mean)):
            with context():
                ppl, logp = perplexity(model, ids, impl)
            row[label] = {"ppl": ppl, "kl_mean": float((logp_ref.exp() * (logp_ref - logp)).sum(dim=-1).mean())}
        end_to_end[name] = row
    model.set_attn_implementation("sdpa")
    return calls, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="int8-hadamard-vsmooth,e4m3,int8,e4m3-hadamard")
    parser.add_argument("--shapes", default="2,8,8,1024,1024,128;1,2,2,4096,4096,128;1,2,2,2048,2048,64",
                        help="B,Hq,Hkv,Sq,Sk,D; separated by ';'")
    parser.add_argument("--smollm2-tokens", type=int, default=1024, help="0: skip the real-model inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/k_mean_sample.json"))
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    records = []
    jobs = [(kind, tuple(int(x) for x in s.split(",")), causal)
            for s in args.shapes.split(";") for kind in KINDS for causal in (False, True)]
    for kind, shape, causal in tqdm(jobs, desc="synthetic"):
        q, k, v = synthetic_qkv(kind, shape, torch.Generator().manual_seed(args.seed), dtype=torch.bfloat16)
        records.append({"input": kind, "shape": shape, "causal": causal,
                        "rel_l2": errors(q, k, v, causal, shape[-1] ** -0.5, recipes)})
    end_to_end = {}
    if args.smollm2_tokens:
        calls, end_to_end = smollm2_runs(args.smollm2_tokens, recipes)
        for call in tqdm(calls, desc="SmolLM2 layers"):
            records.append({"input": f"smollm2 layer {call.layer}", "shape": tuple(call.q.shape), "causal": call.causal,
                            "rel_l2": errors(call.q, call.k, call.v, call.causal, call.scale, recipes)})
    print(f"rel-L2 against float64: K smoothed by the mean of {K_MEAN_TOKENS} tokens / of every token")
    for r in records:
        cells = "  ".join(f"{n} {e['sample']:.5f}/{e['every_token']:.5f}" for n, e in r["rel_l2"].items())
        print(f"{r['input']:18s} {'x'.join(map(str, r['shape'])):22s} {'causal' if r['causal'] else 'full  '}  {cells}")
    for name in recipes:
        ratios = torch.tensor([r["rel_l2"][name]["sample"] / r["rel_l2"][name]["every_token"] for r in records])
        print(f"{name}: sample / every token, over {len(records)} inputs: mean {ratios.mean():.4f}, "
              f"min {ratios.min():.4f}, max {ratios.max():.4f}")
    for name, row in end_to_end.items():
        print(f"SmolLM2 perplexity, every layer {name}: sample {row['sample']['ppl']:.4f} "
              f"(KL {row['sample']['kl_mean']:.2e}), every token {row['every_token']['ppl']:.4f} "
              f"(KL {row['every_token']['kl_mean']:.2e})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"k_mean_tokens": K_MEAN_TOKENS, "seed": args.seed, "records": records,
                                    "smollm2_perplexity": end_to_end}, indent=1))


if __name__ == "__main__":
    main()
