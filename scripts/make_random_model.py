#!/usr/bin/env python3
"""Write a random-weight DeepSeek checkpoint in the Hugging Face hub layout, full-size layer shapes.

    python3 scripts/make_random_model.py --shape v2-lite --layers 4 --out /tmp/v2lite4
    python3 scripts/make_random_model.py --shape v3 --layers 4 --dtype fp8 --out /tmp/v3fp8

Output: config.json, model-0000X-of-0000N.safetensors + model.safetensors.index.json (or a single
model.safetensors when everything fits in one shard). Tensor names, shapes, dtypes and the FP8 block-scale
layout follow the released deepseek-ai checkpoints (see MODEL_SPEC.md §2-3). Useful for loader, converter,
memory and speed tests at real layer shapes; the logits are meaningless.

Needs only numpy. Streams: the header of every shard is planned up front, then each tensor is generated in
row chunks (in parallel threads, one 16 MB buffer each) and written at its offset with pwrite, so memory
stays small whatever the model size. Every row chunk has its own random stream seeded from (--seed, tensor
name, chunk index), so the output is deterministic and depends neither on the sharding nor on --threads.

Weights: projections N(0, 1/fan_in) (std 1/sqrt(fan_in)), RMSNorm weights 1 + 0.01*N(0,1), embeddings N(0,1),
V3 e_score_correction_bias 0.02*N(0,1) in float32. --dtype fp8 stores exactly the tensors DeepSeek quantises
(every Linear weight inside decoder layers, including the MTP layer; not the router, norms, embeddings, head,
eh_proj or shared_head) as float8_e4m3fn with float32 `weight_scale_inv` per 128x128 block
(scale = block absmax / 448, q = e4m3(w / scale), round-to-nearest-even).
"""

import argparse
import json
import os
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK = 128
E4M3_MAX = 448.0
CHUNK_ELEMS = 1 << 22          # 16 MB of float32 per generated chunk (one buffer per thread)

SHAPES = {
    "v2-lite": dict(
        arch="v2", vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, first_k_dense_replace=1, kv_lora_rank=512,
        q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64,
        n_shared_experts=2, num_experts_per_tok=6, topk_method="greedy", n_group=1, topk_group=1,
        norm_topk_prob=False, routed_scaling_factor=1.0, scoring_func="softmax", mscale=0.707,
        bos_token_id=100000, eos_token_id=100001, mtp=0,
    ),
    "v3": dict(
        arch="v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, first_k_dense_replace=3, kv_lora_rank=512,
        q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256,
        n_shared_experts=1, num_experts_per_tok=8, topk_method="noaux_tc", n_group=8, topk_group=4,
        norm_topk_prob=True, routed_scaling_factor=2.5, scoring_func="sigmoid", mscale=1.0,
        bos_token_id=0, eos_token_id=1, mtp=1,
    ),
}

DTYPE_NAME = {"f32": "F32", "bf16": "BF16", "fp8": "F8_E4M3"}
DTYPE_SIZE = {"f32": 4, "bf16": 2, "fp8": 1}


# ------------------------------------------------------------------ number formats

def f32_to_bf16_bits(x, check_nan=True):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even (NaN stays a quiet NaN).
    check_nan=False skips the NaN pass for data known to be finite."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = (b >> 16) & 1
    r += 0x7FFF
    r += b                                     # carries into the exponent = correct rounding up
    r = r.reshape(-1)
    out = r.view(np.uint16)[1::2].copy() if sys.byteorder == "little" else (r >> 16).astype(np.uint16)
    out = out.reshape(np.shape(x))
    if check_nan:
        nan = np.isnan(x)
        if nan.any():
            out[nan] = ((b[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def e4m3fn_bits_arith(x):
    """float32 array -> uint8 float8_e4m3fn bit patterns: round to nearest even, |x| > 448 (and inf)
    saturates to +-448, NaN -> 0x7F|sign. Same bit arithmetic as c10::Float8_e4m3fn for finite |x| <= 448
    (torch itself returns NaN above 464 instead of saturating)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    sign = ((b >> 24) & 0x80).astype(np.uint8)
    a = b & np.uint32(0x7FFFFFFF)
    nan = a > np.uint32(0x7F800000)
    np.minimum(a, np.uint32(0x43E00000), out=a)            # 448.0: saturate (also inf)
    normal = a >= np.uint32(121 << 23)                     # |x| >= 2^-6, smallest e4m3 normal
    # normal numbers: rebias exponent 127 -> 7 and round the 20 dropped mantissa bits to nearest even
    n = a - np.uint32(120 << 23)
    n += np.uint32(0x7FFFF)
    n += (a >> 20) & 1
    n >>= 20
    # subnormals: adding 2^14 makes the FPU round the value to a multiple of 2^-9 (RNE)
    d = (a.view(np.float32) + np.float32(2.0 ** 14)).view(np.uint32) - np.uint32(141 << 23)
    out = np.where(normal, n, d).astype(np.uint8)
    out[nan] = 0x7F
    out |= sign
    return out


_E4M3_LUT = None


def f32_to_e4m3fn_bits(x):
    """Same result as e4m3fn_bits_arith, 3x faster: the e4m3 value of a float32 depends only on its upper 16
    bits and on whether the lower 16 are zero (the rounding point is at bit 20 or above; only a tie needs
    the sticky bit), so one 2^17-entry table built with e4m3fn_bits_arith covers every input exactly."""
    global _E4M3_LUT
    if _E4M3_LUT is None:
        hi = np.arange(1 << 16, dtype=np.uint32) << 16
        lut = np.empty(1 << 17, np.uint8)
        lut[0::2] = e4m3fn_bits_arith(hi.view(np.float32))
        lut[1::2] = e4m3fn_bits_arith((hi | 1).view(np.float32))
        _E4M3_LUT = lut
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    idx = b >> 16
    idx <<= 1
    idx |= (b & 0xFFFF) != 0
    return _E4M3_LUT[idx]


# ------------------------------------------------------------------ model description

def make_config(shape, args):
    s = dict(SHAPES[shape])
    v3 = s["arch"] == "v3"
    if args.vocab:
        s["vocab_size"] = args.vocab
    if args.experts:
        if args.experts % s["n_group"]:
            sys.exit(f"--experts {args.experts} is not a multiple of n_group {s['n_group']}")
        s["n_routed_experts"] = args.experts
    if args.experts_per_tok:
        s["num_experts_per_tok"] = args.experts_per_tok
    if args.first_dense is not None:
        s["first_k_dense_replace"] = args.first_dense
    E, G = s["n_routed_experts"], s["n_group"]
    if s["num_experts_per_tok"] > s["topk_group"] * (E // G):
        sys.exit(f"num_experts_per_tok {s['num_experts_per_tok']} > experts in the kept groups "
                 f"({s['topk_group']} x {E // G})")
    if s["topk_method"] == "noaux_tc" and E // G < 2:
        sys.exit(f"noaux_tc needs >= 2 experts per group (group score = sum of the top 2); "
                 f"{E} experts / {G} groups")
    mtp = 0 if args.no_mtp else s["mtp"]
    bos, eos = s["bos_token_id"], s["eos_token_id"]
    if eos >= s["vocab_size"]:
        bos, eos = 0, 1
    factor, orig = 40.0, 4096
    cfg = {
        "vocab_size": s["vocab_size"],
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "moe_intermediate_size": s["moe_intermediate_size"],
        "num_hidden_layers": args.layers,
        "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_attention_heads"],
        "first_k_dense_replace": s["first_k_dense_replace"],
        "moe_layer_freq": 1,
        "kv_lora_rank": s["kv_lora_rank"],
        "q_lora_rank": s["q_lora_rank"],
        "qk_nope_head_dim": s["qk_nope_head_dim"],
        "qk_rope_head_dim": s["qk_rope_head_dim"],
        "v_head_dim": s["v_head_dim"],
        "n_routed_experts": s["n_routed_experts"],
        "n_shared_experts": s["n_shared_experts"],
        "num_experts_per_tok": s["num_experts_per_tok"],
        "hidden_act": "silu",
        "max_position_embeddings": int(factor * orig),
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v3" if v3 else "deepseek_v2",
        "topk_method": s["topk_method"],
        "n_group": s["n_group"],
        "topk_group": s["topk_group"],
        "norm_topk_prob": s["norm_topk_prob"],
        "routed_scaling_factor": s["routed_scaling_factor"],
        "scoring_func": s["scoring_func"],
    }
    if v3:
        cfg["num_nextn_predict_layers"] = mtp
    cfg["rope_scaling"] = {
        "type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
        "beta_fast": 32, "beta_slow": 1, "mscale": s["mscale"], "mscale_all_dim": s["mscale"],
    }
    if args.dtype == "fp8":
        cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": [BLOCK, BLOCK]}
    return cfg


def layer_tensors(cfg, prefix, moe):
    """(name, shape, kind) of one decoder layer. kind: proj | norm | router | bias."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    rq, rkv = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    a, m = prefix + "self_attn.", prefix + "mlp."
    out = [(prefix + "input_layernorm.weight", [D], "norm")]
    if rq is None:
        out.append((a + "q_proj.weight", [H * (dn + dr), D], "proj"))
    else:
        out += [(a + "q_a_proj.weight", [rq, D], "proj"), (a + "q_a_layernorm.weight", [rq], "norm"),
                (a + "q_b_proj.weight", [H * (dn + dr), rq], "proj")]
    out += [(a + "kv_a_proj_with_mqa.weight", [rkv + dr, D], "proj"),
            (a + "kv_a_layernorm.weight", [rkv], "norm"),
            (a + "kv_b_proj.weight", [H * (dn + dv), rkv], "proj"),
            (a + "o_proj.weight", [D, H * dv], "proj"),
            (prefix + "post_attention_layernorm.weight", [D], "norm")]
    if not moe:
        I = cfg["intermediate_size"]
        return out + [(m + "gate_proj.weight", [I, D], "proj"), (m + "up_proj.weight", [I, D], "proj"),
                      (m + "down_proj.weight", [D, I], "proj")]
    E, Ie = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    out.append((m + "gate.weight", [E, D], "router"))
    if cfg["model_type"] == "deepseek_v3":
        out.append((m + "gate.e_score_correction_bias", [E], "bias"))
    for e in range(E):
        x = f"{m}experts.{e}."
        out += [(x + "gate_proj.weight", [Ie, D], "proj"), (x + "up_proj.weight", [Ie, D], "proj"),
                (x + "down_proj.weight", [D, Ie], "proj")]
    Is = Ie * cfg["n_shared_experts"]
    return out + [(m + "shared_experts.gate_proj.weight", [Is, D], "proj"),
                  (m + "shared_experts.up_proj.weight", [Is, D], "proj"),
                  (m + "shared_experts.down_proj.weight", [D, Is], "proj")]


def tensor_list(cfg):
    """All tensors in layer order; a 'seed' entry names the tensor whose random stream is reused (the MTP
    copies of embed_tokens / lm_head are duplicates in the released checkpoints)."""
    D, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    out = [("model.embed_tokens.weight", [V, D], "embed")]
    for l in range(L):
        out += layer_tensors(cfg, f"model.layers.{l}.", l >= cfg["first_k_dense_replace"])
    out += [("model.norm.weight", [D], "norm"), ("lm_head.weight", [V, D], "proj")]
    for k in range(cfg.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{L + k}."
        out += [(p + "embed_tokens.weight", [V, D], "embed:model.embed_tokens.weight"),
                (p + "enorm.weight", [D], "norm"), (p + "hnorm.weight", [D], "norm"),
                (p + "eh_proj.weight", [D, 2 * D], "proj")]
        out += layer_tensors(cfg, p, True)
        out += [(p + "shared_head.norm.weight", [D], "norm"),
                (p + "shared_head.head.weight", [V, D], "proj:lm_head.weight")]
    return out


def is_fp8(name):
    if not name.startswith("model.layers.") or name.endswith(".eh_proj.weight"):
        return False
    return name.endswith("_proj.weight") or name.endswith(".kv_a_proj_with_mqa.weight")


def stored_entries(cfg, fp8):
    """Planned file entries, grouped in units that stay in one shard: [(name, dtype, shape), ...] per unit,
    with the generation recipe (kind, seed name) of each weight."""
    units = []
    for name, shape, kind in tensor_list(cfg):
        kind, _, seed_name = kind.partition(":")
        recipe = (kind, seed_name or name)
        if fp8 and is_fp8(name):
            sshape = [-(-shape[0] // BLOCK), -(-shape[1] // BLOCK)]
            units.append([(name, "fp8", shape, recipe), (name + "_scale_inv", "f32", sshape, None)])
        elif kind == "bias":
            units.append([(name, "f32", shape, recipe)])
        else:
            units.append([(name, "bf16", shape, recipe)])
    return units


def nbytes(dtype, shape):
    n = DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


# ------------------------------------------------------------------ writing

def plan_shards(units, shard_bytes):
    shards, cur, acc = [], [], 0
    for u in units:
        size = sum(nbytes(dt, sh) for _, dt, sh, _ in u)
        if cur and acc + size > shard_bytes:
            shards.append(cur)
            cur, acc = [], 0
        cur += u
        acc += size
    if cur:
        shards.append(cur)
    return shards


def shard_header(entries):
    """safetensors header for one shard. Data is ordered f32, bf16, fp8 (then by name) so every tensor is
    aligned to its element size; returns (header bytes, {name: absolute file offset})."""
    order = sorted(entries, key=lambda e: (-DTYPE_SIZE[e[1]], e[0]))
    hdr, offs, pos = {"__metadata__": {"format": "pt"}}, {}, 0
    for name, dt, shape, _ in order:
        n = nbytes(dt, shape)
        hdr[name] = {"dtype": DTYPE_NAME[dt], "shape": list(shape), "data_offsets": [pos, pos + n]}
        offs[name] = pos
        pos += n
    blob = json.dumps(hdr, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    start = 8 + len(blob)
    head = len(blob).to_bytes(8, "little") + blob
    return head, {k: v + start for k, v in offs.items()}, start + pos


def name_key(name):
    return zlib.crc32(name.encode())


def pwrite_all(fd, arr, offset):
    mv = memoryview(np.ascontiguousarray(arr)).cast("B")
    while len(mv):
        n = os.pwrite(fd, mv, offset)
        mv, offset = mv[n:], offset + n


_tls = threading.local()


def _buffer():
    if getattr(_tls, "buf", None) is None:
        _tls.buf = np.empty(CHUNK_ELEMS, np.float32)
    return _tls.buf


def chunk_job(fd, seed, key, ci, r0, n, cols, kind, dt, off):
    """Generate rows [r0, r0+n) of a 2-D tensor (its own random stream (seed, name, chunk index)), convert
    and write them at their place in the file. Returns the chunk's block scales for fp8, else None.
    numpy releases the GIL in the RNG fill, the ufuncs and os.pwrite, so chunks run in parallel."""
    rng = np.random.default_rng([seed, key, ci])
    x = _buffer()[: n * cols].reshape(n, cols)
    rng.standard_normal(out=x, dtype=np.float32)
    if kind in ("proj", "router"):
        x *= np.float32(1.0 / np.sqrt(cols))
    if dt == "bf16":
        pwrite_all(fd, f32_to_bf16_bits(x, check_nan=False), off + r0 * cols * 2)
        return None
    # fp8: absmax of each 128x128 block (chunks hold a multiple of 128 rows; edge blocks are partial)
    row_starts = np.arange(0, n, BLOCK)
    amax = np.maximum.reduceat(np.maximum.reduceat(np.abs(x), row_starts, axis=0),
                               np.arange(0, cols, BLOCK), axis=1)
    s = np.maximum(amax, np.float32(1e-12)) / np.float32(E4M3_MAX)
    for bi, rs in enumerate(row_starts):
        x[rs: rs + BLOCK] /= np.repeat(s[bi], BLOCK)[:cols]
    pwrite_all(fd, f32_to_e4m3fn_bits(x), off + r0 * cols)
    return s


def write_tensor(pool, fd, offs, entry, scale_entry, seed):
    """Queue the chunks of one tensor on the pool; returns a function that waits for them (and then
    writes the fp8 block scales), so several tensors are in flight at once."""
    name, dt, shape, (kind, seed_name) = entry
    key = name_key(seed_name)
    if len(shape) == 1:
        x = np.random.default_rng([seed, key]).standard_normal(shape[0], dtype=np.float32)
        if kind == "norm":
            x = np.float32(1.0) + np.float32(0.01) * x
        elif kind == "bias":
            x *= np.float32(0.02)
        pwrite_all(fd, x if dt == "f32" else f32_to_bf16_bits(x), offs[name])
        return lambda: None
    rows, cols = shape
    step = max(1, CHUNK_ELEMS // cols)
    if dt == "fp8":
        step = step // BLOCK * BLOCK
    assert step >= 1 and step * cols <= CHUNK_ELEMS
    jobs = [pool.submit(chunk_job, fd, seed, key, ci, r0, min(step, rows - r0), cols, kind, dt, offs[name])
            for ci, r0 in enumerate(range(0, rows, step))]

    def finish():
        parts = [j.result() for j in jobs]
        if dt == "fp8":
            pwrite_all(fd, np.concatenate(parts, axis=0), offs[scale_entry[0]])
    return finish


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--layers", type=int, default=4, help="num_hidden_layers (default 4)")
    ap.add_argument("--vocab", type=int, help="override vocab_size")
    ap.add_argument("--experts", type=int, help="override n_routed_experts (multiple of n_group)")
    ap.add_argument("--experts-per-tok", type=int, help="override num_experts_per_tok")
    ap.add_argument("--first-dense", type=int, help="override first_k_dense_replace")
    ap.add_argument("--no-mtp", action="store_true", help="V3: omit the MTP layer (num_nextn_predict_layers 0)")
    ap.add_argument("--dtype", choices=["bf16", "fp8"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-bytes", type=float, default=2e9, help="max bytes per shard (default 2e9)")
    ap.add_argument("--threads", type=int, default=0, help="worker threads (default: all CPUs)")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args()
    if args.layers < 1:
        sys.exit("--layers must be >= 1")

    t0 = time.time()
    cfg = make_config(args.shape, args)
    units = stored_entries(cfg, args.dtype == "fp8")
    shards = plan_shards(units, int(args.shard_bytes))
    total = sum(nbytes(dt, sh) for u in units for _, dt, sh, _ in u)
    print(f"{args.shape} {args.dtype}: {cfg['num_hidden_layers']} layers (+{cfg.get('num_nextn_predict_layers', 0)}"
          f" MTP), vocab {cfg['vocab_size']}, {sum(len(u) for u in units)} tensors, {total / 1e9:.2f} GB "
          f"in {len(shards)} file(s) -> {args.out}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    for fn in os.listdir(args.out):   # stale outputs of an earlier run with another shard count
        if fn == "model.safetensors" or fn == "model.safetensors.index.json" or (
                fn.startswith("model-") and fn.endswith(".safetensors")):
            os.remove(os.path.join(args.out, fn))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")

    weight_map, done = {}, 0
    threads = args.threads or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=threads)
    for i, entries in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        head, offs, fsize = shard_header(entries)
        fd = os.open(os.path.join(args.out, fname), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            pwrite_all(fd, np.frombuffer(head, np.uint8), 0)
            os.ftruncate(fd, fsize)
            pending = []
            for j, e in enumerate(entries):
                weight_map[e[0]] = fname
                if e[3] is None:          # a weight_scale_inv, written together with its weight
                    continue
                nxt = entries[j + 1] if j + 1 < len(entries) and entries[j + 1][3] is None else None
                pending.append(write_tensor(pool, fd, offs, e, nxt, args.seed))
                if len(pending) > 4 * threads:
                    pending.pop(0)()
                done += nbytes(e[1], e[2]) + (nbytes(nxt[1], nxt[2]) if nxt else 0)
            for finish in pending:
                finish()
        finally:
            os.close(fd)
        el = time.time() - t0
        print(f"  {fname}: {fsize / 1e9:.2f} GB, {len(entries)} tensors; {done / 1e9:.2f}/{total / 1e9:.2f} GB "
              f"after {el:.1f} s ({done / 1e6 / max(el, 1e-9):.0f} MB/s)", flush=True)
    pool.shutdown()
    if len(shards) > 1:
        with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)
            f.write("\n")
    print(f"done in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
