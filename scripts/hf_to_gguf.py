#!/usr/bin/env python3
"""Writes a bf16 DeepSeek-V2(-Lite) checkpoint in the hub layout as a BF16 GGUF for llama.cpp.

For scripts/compare_llama_cpp.sh only: the tensor names and layouts are those llama.cpp's
convert_hf_to_gguf.py gives its deepseek2 architecture (kv_b_proj split into attn_k_b, transposed,
and attn_v_b; experts stacked), learnt by reading it; no tokenizer (llama.cpp's "none" model).
Needs numpy and llama.cpp's gguf-py package (pass its directory).

  hf_to_gguf.py CHECKPOINT_DIR OUT.gguf GGUF_PY_DIR
"""
import json
import struct
import sys

import numpy as np

if len(sys.argv) != 4:
    sys.exit(__doc__)
src, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
import gguf  # noqa: E402

hp = json.load(open(f'{src}/config.json'))
if hp.get('q_lora_rank') is not None or hp.get('scoring_func', 'softmax') != 'softmax':
    sys.exit('hf_to_gguf.py: only DeepSeek-V2-Lite shapes (no q LoRA, softmax routing) are supported')
weight_map = json.load(open(f'{src}/model.safetensors.index.json'))['weight_map']
headers = {}


def load(name):
    """The bf16 tensor `name` as a uint16 array of its shape."""
    shard = weight_map[name]
    if shard not in headers:
        with open(f'{src}/{shard}', 'rb') as f:
            n = struct.unpack('<Q', f.read(8))[0]
            headers[shard] = (json.loads(f.read(n)), 8 + n)
    header, base = headers[shard]
    e = header[name]
    if e['dtype'] != 'BF16':
        sys.exit(f"hf_to_gguf.py: {name} is {e['dtype']}; only bf16 checkpoints are supported")
    begin = e['data_offsets'][0]
    return np.array(np.memmap(f'{src}/{shard}', dtype=np.uint16, mode='r', offset=base + begin,
                              shape=tuple(e['shape'])))


def f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


arch = gguf.MODEL_ARCH.DEEPSEEK2
n_layers = hp['num_hidden_layers']
rope = hp['rope_scaling']
w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
w.add_block_count(n_layers)
w.add_context_length(hp['max_position_embeddings'])
w.add_embedding_length(hp['hidden_size'])
w.add_feed_forward_length(hp['intermediate_size'])
w.add_head_count(hp['num_attention_heads'])
w.add_head_count_kv(1)  # MLA: one latent "head" of keys and values
w.add_rope_freq_base(hp['rope_theta'])
w.add_layer_norm_rms_eps(hp['rms_norm_eps'])
w.add_expert_used_count(hp['num_experts_per_tok'])
w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
w.add_leading_dense_block_count(hp['first_k_dense_replace'])
w.add_vocab_size(hp['vocab_size'])
w.add_kv_lora_rank(hp['kv_lora_rank'])
w.add_key_length(hp['kv_lora_rank'] + hp['qk_rope_head_dim'])
w.add_value_length(hp['kv_lora_rank'])
w.add_key_length_mla(hp['qk_nope_head_dim'] + hp['qk_rope_head_dim'])
w.add_value_length_mla(hp['v_head_dim'])
w.add_expert_feed_forward_length(hp['moe_intermediate_size'])
w.add_expert_count(hp['n_routed_experts'])
w.add_expert_shared_count(hp['n_shared_experts'])
w.add_expert_weights_scale(hp['routed_scaling_factor'])
w.add_expert_weights_norm(hp['norm_topk_prob'])
w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
w.add_rope_dimension_count(hp['qk_rope_head_dim'])
w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
w.add_rope_scaling_factor(rope['factor'])
w.add_rope_scaling_orig_ctx_len(rope['original_max_position_embeddings'])
w.add_rope_scaling_yarn_log_mul(0.1 * rope['mscale_all_dim'])
w.add_tokenizer_model('none')

names = gguf.get_tensor_name_map(arch, n_layers)


def put(hf_name, arr):
    """Vectors (norms) as f32, matrices as bf16."""
    name = names.get_name(hf_name) + '.weight'
    if arr.ndim == 1:
        w.add_tensor(name, f32(arr))
    else:
        w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)


H, dn, dv = hp['num_attention_heads'], hp['qk_nope_head_dim'], hp['v_head_dim']
for name in ['model.embed_tokens', 'model.norm', 'lm_head']:
    put(name, load(name + '.weight'))
for layer in range(n_layers):
    p = f'model.layers.{layer}.'
    for n in ['input_layernorm', 'post_attention_layernorm', 'self_attn.kv_a_layernorm', 'self_attn.q_proj',
              'self_attn.kv_a_proj_with_mqa', 'self_attn.o_proj']:
        put(p + n, load(p + n + '.weight'))
    kv_b = load(p + 'self_attn.kv_b_proj.weight').reshape(H, dn + dv, -1)
    put(p + 'self_attn.k_b_proj', np.ascontiguousarray(kv_b[:, :dn, :].transpose(0, 2, 1)))
    put(p + 'self_attn.v_b_proj', np.ascontiguousarray(kv_b[:, dn:, :]))
    if layer < hp['first_k_dense_replace']:
        for n in ['gate_proj', 'up_proj', 'down_proj']:
            put(p + 'mlp.' + n, load(p + f'mlp.{n}.weight'))
        continue
    put(p + 'mlp.gate', load(p + 'mlp.gate.weight'))
    for n in ['gate_proj', 'up_proj', 'down_proj']:
        put(p + 'mlp.shared_experts.' + n, load(p + f'mlp.shared_experts.{n}.weight'))
        experts = [load(p + f'mlp.experts.{e}.{n}.weight') for e in range(hp['n_routed_experts'])]
        put(p + 'mlp.experts.' + n, np.stack(experts))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print('wrote', out)
