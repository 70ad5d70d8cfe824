#!/usr/bin/env python3
"""Produce moerun's own golden fixtures: tiny random DeepSeek checkpoints plus HF transformers' logits.

Each fixture folder is a complete Hugging Face checkpoint in the real hub layout (config.json, model.safetensors
or model-0000X-of-0000N.safetensors + model.safetensors.index.json) and a golden.safetensors with the reference
outputs of transformers (float32, eager attention, greedy generate with KV cache). The format is the one of
/work/shared/golden (see its README); the seeds and shapes here are our own.

    python3 tests/golden/make_golden.py --out tests/data/golden           # write all four fixtures
    python3 tests/golden/make_golden.py --only v3_fp8                      # one fixture
    python3 tests/golden/make_golden.py --check-shared /work/shared/golden/v3_bf16 [...]
        # load a foreign fixture with exactly the procedure used here and compare with its stored outputs

How the reference is computed: the values stored in the checkpoint (bf16; for FP8 the dequantised
W = float32(fp8) * weight_scale_inv per 128x128 block) are loaded as float32 into transformers, eager attention,
float32 everywhere, no activation quantisation. Requires torch, transformers (5.17 was used), safetensors.
CI never runs this script: the fixtures are committed.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BLOCK = 128          # FP8 weight block (rows and columns)
E4M3_MAX = 448.0     # largest finite float8_e4m3fn value
N_DECODE = 12        # generated tokens per prompt
PROMPT_LENGTHS = (4, 19, 100)

FP8_QUANT_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [BLOCK, BLOCK],
}

# ---------------------------------------------------------------------------------------------------------------
# Fixture definitions. Sizes are chosen to keep every folder around 2 MB while exercising the awkward cases:
# d_v != d_nope, odd head counts, expert counts that are not a power of two, group sizes > 2 (so the V3 group
# score "sum of the top-2 in a group" differs from "sum of the group"), widths that are not multiples of 16,
# and for FP8 partial 128-blocks plus dimensions spanning 2 and 3 blocks.
# ---------------------------------------------------------------------------------------------------------------
FIXTURES = {
    "v2lite_bf16": dict(
        seed=1101, arch="v2", dtype="bf16", shards=1,
        vocab_size=512, hidden_size=128, intermediate_size=224, moe_intermediate_size=48,
        num_hidden_layers=3, num_attention_heads=4, first_k_dense_replace=1,
        kv_lora_rank=64, q_lora_rank=None, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=10, n_shared_experts=2, num_experts_per_tok=3,
        topk_method="greedy", n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0,
        scoring_func="softmax", yarn_factor=4.0, yarn_original=256, mscale=0.707,
    ),
    "v2_grouped_bf16": dict(
        seed=2202, arch="v2", dtype="bf16", shards=1,
        vocab_size=640, hidden_size=128, intermediate_size=192, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=2, first_k_dense_replace=1,
        kv_lora_rank=80, q_lora_rank=96, qk_nope_head_dim=48, qk_rope_head_dim=32, v_head_dim=48,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=3,
        topk_method="group_limited_greedy", n_group=4, topk_group=2, norm_topk_prob=False,
        routed_scaling_factor=16.0, scoring_func="softmax", yarn_factor=16.0, yarn_original=256, mscale=0.707,
    ),
    "v3_bf16": dict(
        seed=3303, arch="v3", dtype="bf16", shards=2, mtp=True,
        vocab_size=384, hidden_size=160, intermediate_size=192, moe_intermediate_size=24,
        num_hidden_layers=3, num_attention_heads=3, first_k_dense_replace=1,
        kv_lora_rank=64, q_lora_rank=96, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=40,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=3,
        topk_method="noaux_tc", n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
        scoring_func="sigmoid", yarn_factor=4.0, yarn_original=256, mscale=1.0,
    ),
    "v3_fp8": dict(
        seed=4404, arch="v3", dtype="fp8", shards=2, mtp=True,
        vocab_size=320, hidden_size=192, intermediate_size=320, moe_intermediate_size=48,
        num_hidden_layers=3, num_attention_heads=3, first_k_dense_replace=1,
        kv_lora_rank=80, q_lora_rank=160, qk_nope_head_dim=48, qk_rope_head_dim=32, v_head_dim=48,
        n_routed_experts=12, n_shared_experts=1, num_experts_per_tok=3,
        topk_method="noaux_tc", n_group=3, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
        scoring_func="sigmoid", yarn_factor=16.0, yarn_original=256, mscale=1.0,
    ),
}


def log(msg=""):
    print(msg, flush=True)


# ------------------------------------------------------------------ config.json

def make_config(spec):
    v3 = spec["arch"] == "v3"
    cfg = {
        "vocab_size": spec["vocab_size"],
        "hidden_size": spec["hidden_size"],
        "intermediate_size": spec["intermediate_size"],
        "moe_intermediate_size": spec["moe_intermediate_size"],
        "num_hidden_layers": spec["num_hidden_layers"],
        "num_attention_heads": spec["num_attention_heads"],
        "num_key_value_heads": spec["num_attention_heads"],
        "first_k_dense_replace": spec["first_k_dense_replace"],
        "moe_layer_freq": 1,
        "kv_lora_rank": spec["kv_lora_rank"],
        "q_lora_rank": spec["q_lora_rank"],
        "qk_nope_head_dim": spec["qk_nope_head_dim"],
        "qk_rope_head_dim": spec["qk_rope_head_dim"],
        "v_head_dim": spec["v_head_dim"],
        "n_routed_experts": spec["n_routed_experts"],
        "n_shared_experts": spec["n_shared_experts"],
        "num_experts_per_tok": spec["num_experts_per_tok"],
        "hidden_act": "silu",
        "max_position_embeddings": int(spec["yarn_factor"] * spec["yarn_original"]),
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v3" if v3 else "deepseek_v2",
        "topk_method": spec["topk_method"],
        "n_group": spec["n_group"],
        "topk_group": spec["topk_group"],
        "norm_topk_prob": spec["norm_topk_prob"],
        "routed_scaling_factor": spec["routed_scaling_factor"],
        "scoring_func": spec["scoring_func"],
    }
    if v3:
        cfg["num_nextn_predict_layers"] = 1 if spec.get("mtp") else 0
    # Classic (pre-v5) spelling, as in the released checkpoints: `rope_scaling` + top-level `rope_theta`.
    cfg["rope_scaling"] = {
        "type": "yarn",
        "factor": spec["yarn_factor"],
        "original_max_position_embeddings": spec["yarn_original"],
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": spec["mscale"],
        "mscale_all_dim": spec["mscale"],
    }
    if spec["dtype"] == "fp8":
        cfg["quantization_config"] = dict(FP8_QUANT_CONFIG)
    return cfg


# ------------------------------------------------------------------ tensor list and random weights

def layer_tensors(cfg, prefix, moe, v3):
    """(name, shape, kind) for one decoder layer; kind: proj | norm | router | bias."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    rq, rkv = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    out = [(prefix + "input_layernorm.weight", [D], "norm")]
    a = prefix + "self_attn."
    if rq is None:
        out.append((a + "q_proj.weight", [H * (dn + dr), D], "proj"))
    else:
        out += [(a + "q_a_proj.weight", [rq, D], "proj"),
                (a + "q_a_layernorm.weight", [rq], "norm"),
                (a + "q_b_proj.weight", [H * (dn + dr), rq], "proj")]
    out += [(a + "kv_a_proj_with_mqa.weight", [rkv + dr, D], "proj"),
            (a + "kv_a_layernorm.weight", [rkv], "norm"),
            (a + "kv_b_proj.weight", [H * (dn + dv), rkv], "proj"),
            (a + "o_proj.weight", [D, H * dv], "proj"),
            (prefix + "post_attention_layernorm.weight", [D], "norm")]
    m = prefix + "mlp."
    if not moe:
        I = cfg["intermediate_size"]
        out += [(m + "gate_proj.weight", [I, D], "proj"), (m + "up_proj.weight", [I, D], "proj"),
                (m + "down_proj.weight", [D, I], "proj")]
        return out
    E, Ie = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    out.append((m + "gate.weight", [E, D], "router"))
    if v3:
        out.append((m + "gate.e_score_correction_bias", [E], "bias"))
    for e in range(E):
        x = f"{m}experts.{e}."
        out += [(x + "gate_proj.weight", [Ie, D], "proj"), (x + "up_proj.weight", [Ie, D], "proj"),
                (x + "down_proj.weight", [D, Ie], "proj")]
    Is = Ie * cfg["n_shared_experts"]
    out += [(m + "shared_experts.gate_proj.weight", [Is, D], "proj"),
            (m + "shared_experts.up_proj.weight", [Is, D], "proj"),
            (m + "shared_experts.down_proj.weight", [D, Is], "proj")]
    return out


def tensor_list(cfg):
    v3 = cfg["model_type"] == "deepseek_v3"
    D, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    out = [("model.embed_tokens.weight", [V, D], "embed")]
    for l in range(L):
        out += layer_tensors(cfg, f"model.layers.{l}.", l >= cfg["first_k_dense_replace"], v3)
    out += [("model.norm.weight", [D], "norm"), ("lm_head.weight", [V, D], "proj")]
    if v3 and cfg.get("num_nextn_predict_layers", 0) > 0:
        p = f"model.layers.{L}."   # the MTP module (transformers ignores it)
        out += [(p + "embed_tokens.weight", [V, D], "copy:model.embed_tokens.weight"),
                (p + "enorm.weight", [D], "norm"),
                (p + "hnorm.weight", [D], "norm"),
                (p + "eh_proj.weight", [D, 2 * D], "proj")]
        out += layer_tensors(cfg, p, True, v3)
        out += [(p + "shared_head.norm.weight", [D], "norm"),
                (p + "shared_head.head.weight", [V, D], "copy:lm_head.weight")]
    return out


def random_weights(cfg, seed):
    """float32 master weights, drawn in tensor_list order from one seeded generator.
    N(mean, variance) notation as in the shared README: projections N(0, 1/fan_in), norms 1 + N(0, 0.01),
    embeddings N(0, 1), V3 correction bias N(0, 0.25)."""
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape, kind in tensor_list(cfg):
        if kind.startswith("copy:"):
            w[name] = w[kind[5:]].clone()
            continue
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind in ("proj", "router"):
            x *= 1.0 / math.sqrt(shape[1])
        elif kind == "norm":
            x = 1.0 + 0.1 * x
        elif kind == "bias":
            x *= 0.5
        w[name] = x
    return w


def is_fp8_tensor(name, cfg):
    """Exactly the tensors DeepSeek stores in FP8 (MODEL_SPEC section 3): Linear weights inside decoder layers
    (main and MTP), not the router, norms, embeddings, head, eh_proj or shared_head."""
    if not name.startswith("model.layers.") or name.endswith(".eh_proj.weight"):
        return False
    return name.endswith("_proj.weight") or name.endswith(".kv_a_proj_with_mqa.weight")


def quantize_fp8(w):
    """DeepSeek-style 128x128 block quantisation: scale = block absmax / 448, q = e4m3(w / scale)."""
    rows, cols = w.shape
    rb, cb = -(-rows // BLOCK), -(-cols // BLOCK)
    pad = torch.zeros(rb * BLOCK, cb * BLOCK, dtype=torch.float32)
    pad[:rows, :cols] = w
    blocks = pad.view(rb, BLOCK, cb, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))                      # [rb, cb]
    scale = (amax.clamp(min=1e-12) / E4M3_MAX).to(torch.float32)
    q = (blocks / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    q = q.view(rb * BLOCK, cb * BLOCK)[:rows, :cols].contiguous()
    return q, scale.contiguous()


def dequantize_fp8(q, scale):
    rows, cols = q.shape
    s = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
    return q.to(torch.float32) * s


def stored_tensors(cfg, master, dtype):
    """What goes into the checkpoint files: bf16, fp8 + fp32 weight_scale_inv, fp32 correction bias."""
    out = {}
    for name, w in master.items():
        if name.endswith("e_score_correction_bias"):
            out[name] = w.to(torch.float32)            # fp32 as in the released V3 checkpoints
        elif dtype == "fp8" and is_fp8_tensor(name, cfg):
            q, s = quantize_fp8(w)
            out[name] = q
            out[name + "_scale_inv"] = s
        else:
            out[name] = w.to(torch.bfloat16)
    return out


# ------------------------------------------------------------------ checkpoint I/O (hub layout)

def write_checkpoint(folder, cfg, tensors, n_shards):
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".json")):
            os.remove(os.path.join(folder, f))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    meta = {"format": "pt"}
    names = sorted(tensors)
    if n_shards == 1:
        save_file({k: tensors[k] for k in names}, os.path.join(folder, "model.safetensors"), metadata=meta)
        return
    nbytes = {k: tensors[k].numel() * tensors[k].element_size() for k in names}
    total = sum(nbytes.values())
    # Greedy split into n_shards of about equal size, never separating a weight from its weight_scale_inv.
    shards, cur, acc = [], [], 0
    for k in names:
        cur.append(k)
        acc += nbytes[k]
        next_is_scale = False
        i = names.index(k)
        if i + 1 < len(names) and names[i + 1] == k + "_scale_inv":
            next_is_scale = True
        if (len(shards) < n_shards - 1 and acc >= total * (len(shards) + 1) / n_shards and not next_is_scale):
            shards.append(cur)
            cur = []
    shards.append(cur)
    assert len(shards) == n_shards and all(shards)
    weight_map = {}
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in group}, os.path.join(folder, fname), metadata=meta)
        for k in group:
            weight_map[k] = fname
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def read_checkpoint(folder):
    """All tensors of a hub-layout folder, as stored."""
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fn in files:
        with safe_open(os.path.join(folder, fn), framework="pt") as s:
            for k in s.keys():
                assert k not in out, f"duplicate tensor {k}"
                out[k] = s.get_tensor(k)
    return out


def dequantized_float32(cfg, stored):
    """float32 view of the checkpoint: fp8 weights multiplied by their block scales, the rest upcast."""
    out = {}
    for k, t in stored.items():
        if k.endswith("_scale_inv"):
            w = k[: -len("_scale_inv")]
            assert w in stored and stored[w].dtype == torch.float8_e4m3fn, f"orphan scale {k}"
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = stored.get(k + "_scale_inv")
            assert s is not None, f"{k} is fp8 but has no weight_scale_inv"
            exp = [-(-t.shape[0] // BLOCK), -(-t.shape[1] // BLOCK)]
            assert list(s.shape) == exp and s.dtype == torch.float32, f"{k}: scale {list(s.shape)} != {exp}"
            out[k] = dequantize_fp8(t, s)
        else:
            out[k] = t.to(torch.float32)
    return out


# ------------------------------------------------------------------ reference model

def expected_scaling(cfg):
    dqk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    m = 1.0
    if rs and rs.get("mscale_all_dim") and rs.get("factor", 1.0) > 1.0:
        m = 0.1 * rs["mscale_all_dim"] * math.log(rs["factor"]) + 1.0
    return dqk ** -0.5 * m * m


def load_reference(folder):
    """Load a fixture folder into transformers as float32 exactly as the goldens were computed. Returns
    (model, cfg, float32 tensors). Checks the loading report and that the weights arrived unchanged."""
    from transformers import AutoModelForCausalLM

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    stored = read_checkpoint(folder)
    f32 = dequantized_float32(cfg, stored)
    tmp = None
    src = folder
    if "quantization_config" in cfg:
        # transformers would install its FP8 quantizer (activation quantisation, GPU kernels); instead hand it
        # the dequantised weights as a plain float32 checkpoint with the same tensor names.
        tmp = tempfile.mkdtemp(prefix="moerun_golden_")
        c2 = {k: v for k, v in cfg.items() if k != "quantization_config"}
        c2["torch_dtype"] = "float32"
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(c2, f, indent=2)
        save_file(f32, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        src = tmp
        log(f"  fp8: dequantised {sum(t.dtype == torch.float8_e4m3fn for t in stored.values())} tensors "
            f"(W = fp8 * weight_scale_inv) into a float32 copy")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    model.eval()

    L = cfg["num_hidden_layers"]
    mtp_prefix = f"model.layers.{L}."
    has_mtp = cfg.get("num_nextn_predict_layers", 0) > 0
    unexpected = sorted(info["unexpected_keys"])
    bad_unexpected = [k for k in unexpected if not (has_mtp and k.startswith(mtp_prefix))]
    mtp_ignored = len(unexpected) - len(bad_unexpected)
    log(f"  loaded {type(model).__name__}: missing={len(info['missing_keys'])} "
        f"mismatched={len(info['mismatched_keys'])} unexpected={len(unexpected)}"
        + (f" (all {mtp_ignored} are the MTP layer {mtp_prefix}*, ignored by transformers)" if has_mtp else ""))
    assert not info["missing_keys"], f"missing keys: {sorted(info['missing_keys'])}"
    assert not info["mismatched_keys"], f"mismatched keys: {info['mismatched_keys']}"
    assert not info["error_msgs"], info["error_msgs"]
    assert not bad_unexpected, f"unexpected keys: {bad_unexpected}"
    if has_mtp:
        assert mtp_ignored > 0, "config says MTP but the checkpoint has no MTP tensors"

    # The weights in the model must be exactly the checkpoint's (spot checks on unfused parameters).
    sd = model.state_dict()
    checked = 0
    for k, t in f32.items():
        if k in sd:
            assert torch.equal(sd[k].to(torch.float32), t), f"loaded value differs: {k}"
            checked += 1
    # The fused expert tensors: gate_up_proj [E, 2I, D] = cat(gate, up), down_proj [E, D, I].
    for l in range(cfg["first_k_dense_replace"], L):
        p = f"model.layers.{l}.mlp.experts."
        gu, dn = sd.get(p + "gate_up_proj"), sd.get(p + "down_proj")
        if gu is None:
            continue
        for e in range(cfg["n_routed_experts"]):
            ref = torch.cat([f32[f"{p}{e}.gate_proj.weight"], f32[f"{p}{e}.up_proj.weight"]], 0)
            assert torch.equal(gu[e].float(), ref), f"fused gate_up differs: layer {l} expert {e}"
            assert torch.equal(dn[e].float(), f32[f"{p}{e}.down_proj.weight"]), f"down differs: {l} {e}"
            checked += 2
    log(f"  {checked} loaded parameters equal the checkpoint values bit for bit")

    attn = model.model.layers[0].self_attn
    want = expected_scaling(cfg)
    log(f"  attention softmax scale (layers[0].self_attn.scaling) = {attn.scaling:.9f}; "
        f"d_qk^-1/2 * m^2 = {want:.9f}")
    assert abs(attn.scaling - want) < 1e-9 * want, "transformers' softmax scale lacks the mscale^2 factor"
    if cfg["model_type"] == "deepseek_v3" and L > cfg["first_k_dense_replace"]:
        b = model.model.layers[cfg["first_k_dense_replace"]].mlp.gate.e_score_correction_bias
        assert b.dtype == torch.float32
    return model, cfg, f32


@torch.no_grad()
def reference_outputs(model, prompts):
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(
        max_new_tokens=N_DECODE, min_new_tokens=0, do_sample=False, num_beams=1,
        eos_token_id=None, pad_token_id=0, bos_token_id=0,
        output_logits=True, return_dict_in_generate=True, use_cache=True,
    )
    # Never stop at eos (id 1): the reference continues for N_DECODE tokens whatever they are. A None in the
    # passed config alone would be filled in from the model's own generation_config, so clear that too.
    model.generation_config.eos_token_id = None
    out = {}
    for i, p in enumerate(prompts):
        ids = p.to(torch.long)[None]
        prefill = model(input_ids=ids, use_cache=False).logits[0].to(torch.float32)
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
        gen = g.sequences[0, ids.shape[1]:]
        assert gen.numel() == N_DECODE, f"generate stopped early: {gen.numel()} tokens"
        dec = torch.stack([x[0] for x in g.logits]).to(torch.float32)
        assert torch.equal(dec.argmax(-1), gen), "generated tokens are not the argmax of the logits"
        top2 = dec.topk(2, dim=-1).values
        out[f"prompt.{i}"] = p.to(torch.int32).contiguous()
        out[f"prefill_logits.{i}"] = prefill.contiguous()
        out[f"generated.{i}"] = gen.to(torch.int32).contiguous()
        out[f"decode_logits.{i}"] = dec.contiguous()
        out[f"decode_margin.{i}"] = (top2[:, 0] - top2[:, 1]).contiguous()
        d0 = (dec[0] - prefill[-1]).abs().max().item()
        log(f"  prompt {i}: n={p.numel():3d} generated={gen.tolist()} "
            f"min margin={out[f'decode_margin.{i}'].min().item():.4f} |decode[0]-prefill[-1]|max={d0:.2e}")
    return out


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ------------------------------------------------------------------ commands

def setup_determinism():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)


def build_fixture(name, spec, out_root):
    folder = os.path.join(out_root, name)
    log(f"== {name}: {spec['arch'].upper()} {spec['dtype']} seed={spec['seed']} -> {folder}")
    cfg = make_config(spec)
    master = random_weights(cfg, spec["seed"])
    stored = stored_tensors(cfg, master, spec["dtype"])
    write_checkpoint(folder, cfg, stored, spec["shards"])
    n_fp8 = sum(t.dtype == torch.float8_e4m3fn for t in stored.values())
    log(f"  wrote {len(stored)} tensors ({n_fp8} fp8 + scales) in {spec['shards']} file(s)")

    model, cfg2, _ = load_reference(folder)
    g = torch.Generator().manual_seed(spec["seed"] + 7)
    prompts = [torch.randint(2, cfg["vocab_size"], (n,), generator=g, dtype=torch.int64) for n in PROMPT_LENGTHS]
    golden = reference_outputs(model, prompts)
    save_file(golden, os.path.join(folder, "golden.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(folder):
        os.chmod(os.path.join(folder, f), 0o644)   # safetensors writes 0600
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    log(f"  {name}: {size / 1e6:.2f} MB in {len(os.listdir(folder))} files")
    return size


def check_shared(folder):
    log(f"== check {folder}")
    model, cfg, _ = load_reference(folder)
    ref = load_file(os.path.join(folder, "golden.safetensors"))
    n = len([k for k in ref if k.startswith("prompt.")])
    prompts = [ref[f"prompt.{i}"] for i in range(n)]
    ours = reference_outputs(model, prompts)
    worst = 0.0
    for i in range(n):
        e_pre = rel_l2(ours[f"prefill_logits.{i}"], ref[f"prefill_logits.{i}"])
        e_dec = rel_l2(ours[f"decode_logits.{i}"], ref[f"decode_logits.{i}"])
        same = torch.equal(ours[f"generated.{i}"], ref[f"generated.{i}"])
        worst = max(worst, e_pre, e_dec)
        log(f"  prompt {i} (n={prompts[i].numel()}): prefill rel L2 {e_pre:.2e}, decode rel L2 {e_dec:.2e}, "
            f"generated {'identical' if same else 'DIFFERENT'}")
    log(f"  worst rel L2: {worst:.2e} -> {'OK' if worst < 1e-5 else 'MISMATCH'}")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("tests", "data", "golden"), help="output root folder")
    ap.add_argument("--only", nargs="+", choices=sorted(FIXTURES), help="build only these fixtures")
    ap.add_argument("--check-shared", nargs="+", metavar="DIR",
                    help="instead of building, reload these fixture folders and compare with their goldens")
    args = ap.parse_args()

    import transformers
    log(f"torch {torch.__version__}, transformers {transformers.__version__}")
    setup_determinism()

    if args.check_shared:
        worst = max(check_shared(d) for d in args.check_shared)
        log(f"overall worst rel L2: {worst:.2e}")
        return 0 if worst < 1e-5 else 1

    total = 0
    for name in (args.only or list(FIXTURES)):
        total += build_fixture(name, FIXTURES[name], args.out)
    log(f"done: {total / 1e6:.2f} MB total under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
