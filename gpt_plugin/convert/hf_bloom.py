"""BLOOM (`BloomForCausalLM`) <-> gpt_plugin: sequential pre-LN blocks, ALiBi, LayerNorm after the embedding
(`embedding_layer_norm=True`), tanh GELU, biases, tied head.

| HF tensor (base model)                          | gpt_plugin param                                   |
|-------------------------------------------------|----------------------------------------------------|
| `word_embeddings.weight` (V, D)                 | `token_embedder/embedding`                         |
| `word_embeddings_layernorm.{weight,bias}`       | `embedding_norm/{scale,bias}`                      |
| `h.L.input_layernorm.{weight,bias}`             | `layers_L/input_norm/{scale,bias}`                 |
| `h.L.self_attention.query_key_value.weight` (3D, D) | `layers_L/attention/qkv/kernel` (D, 3, D): per-head fused layout, see below |
| `h.L.self_attention.query_key_value.bias` (3D)  | `layers_L/attention/qkv/bias` (3, D)               |
| `h.L.self_attention.dense.{weight,bias}`        | `layers_L/attention/out/{kernel (= weight.T),bias}` |
| `h.L.post_attention_layernorm.{weight,bias}`    | `layers_L/mlp_norm/{scale,bias}`                   |
| `h.L.mlp.dense_h_to_4h`, `h.L.mlp.dense_4h_to_h` | `layers_L/mlp/wi`, `layers_L/mlp/wo` (kernel = weight.T) |
| `ln_f.{weight,bias}`                            | `final_norm/{scale,bias}`                          |

BLOOM's fused projection orders its 3D outputs per head: output (h * 3 + s) * head_dim + d is part s (q, k, v)
of head h (`view(B, T, H, 3, head_dim)`); ours is (s, h * head_dim + d). The permutation is applied here, at
conversion time, so the model itself has one q/k/v layout.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import numpy as np

from gpt_plugin.convert.hf_io import Entry, copy, get_key, layer_norm, linear, with_bias
from gpt_plugin.network import GPTConfig

ARCHITECTURE = "BloomForCausalLM"
MODEL_TYPE = "bloom"
EMBEDDING = "word_embeddings.weight"
DROPPED = re.compile(r"$^")  # nothing


def config_from_hf(hf: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str], List[str]]:
  problems, notes = [], []
  if hf.get("apply_residual_connection_post_layernorm", False):
    problems.append("apply_residual_connection_post_layernorm=true (only pre-LN residuals are implemented)")
  heads = int(get_key(hf, "n_head", "num_attention_heads", default=8))
  fields = dict(
    vocab_size=int(hf.get("vocab_size", 250880)),
    emb_dim=int(get_key(hf, "hidden_size", "n_embed", default=64)),
    num_heads=heads,
    num_layers=int(get_key(hf, "n_layer", "num_hidden_layers", default=2)),
    mlp_dim=None,  # transformers' BloomMLP is always 4 * hidden_size
    position_embedding="alibi",
    gelu_approximate=True,  # bloom_gelu_forward is the tanh approximation
    embedding_layer_norm=True,
    dropout_rate=float(hf.get("hidden_dropout", 0.0)),
    attention_dropout_rate=float(hf.get("attention_dropout", 0.0)),
  )
  return fields, problems, notes


def mismatch(cfg: GPTConfig) -> List[str]:
  out = []
  if cfg.position_embedding != "alibi":
    out.append("BLOOM needs position_embedding='alibi'")
  if not cfg.embedding_layer_norm:
    out.append("BLOOM needs embedding_layer_norm=True")
  if not cfg.use_bias:
    out.append("BLOOM needs use_bias=True")
  if not cfg.gelu_approximate:
    out.append("BLOOM needs gelu_approximate=True (tanh GELU)")
  if cfg.mlp_width != 4 * cfg.emb_dim:
    out.append(f"BLOOM needs mlp_dim = 4 * emb_dim, got {cfg.mlp_width}")
  if cfg.alibi_max_bias != 8.0:
    out.append(f"BLOOM needs alibi_max_bias=8, got {cfg.alibi_max_bias}")
  if cfg.clip_qkv is not None:
    out.append("BLOOM has no clip_qkv")
  return out


def config_to_hf(cfg: GPTConfig) -> Dict[str, Any]:
  return {
    "hidden_size": cfg.emb_dim,
    "n_head": cfg.num_heads,
    "n_layer": cfg.num_layers,
    "hidden_dropout": cfg.dropout_rate,
    "attention_dropout": cfg.attention_dropout,
    "apply_residual_connection_post_layernorm": False,
  }


def _qkv_entries(prefix: str, ours: str, heads: int) -> List[Entry]:
  def kernel_in(w):  # (3D, D) torch Linear -> (D, 3, D)
    d_in = w.shape[1]
    return np.asarray(w).T.reshape(d_in, heads, 3, -1).transpose(0, 2, 1, 3).reshape(d_in, 3, -1)

  def kernel_out(k):
    d_in = k.shape[0]
    return np.ascontiguousarray(np.asarray(k).reshape(d_in, 3, heads, -1).transpose(0, 2, 1, 3).reshape(d_in, -1).T)

  def bias_in(b):
    return np.asarray(b).reshape(heads, 3, -1).transpose(1, 0, 2).reshape(3, -1)

  def bias_out(b):
    return np.asarray(b).reshape(3, heads, -1).transpose(1, 0, 2).reshape(-1)

  return [
    Entry(prefix + ".weight", ours + "/kernel", kernel_in, kernel_out),
    Entry(prefix + ".bias", ours + "/bias", bias_in, bias_out),
  ]


def entries(cfg: GPTConfig) -> List[Entry]:
  out = [copy("word_embeddings.weight", "token_embedder/embedding")]
  out += layer_norm("word_embeddings_layernorm", "embedding_norm")
  for i in range(cfg.num_layers):
    h, ours = f"h.{i}.", f"layers_{i}/"
    out += layer_norm(h + "input_layernorm", ours + "input_norm")
    out += _qkv_entries(h + "self_attention.query_key_value", ours + "attention/qkv", cfg.num_heads)
    out += with_bias(linear, h + "self_attention.dense", ours + "attention/out")
    out += layer_norm(h + "post_attention_layernorm", ours + "mlp_norm")
    out += with_bias(linear, h + "mlp.dense_h_to_4h", ours + "mlp/wi")
    out += with_bias(linear, h + "mlp.dense_4h_to_h", ours + "mlp/wo")
  return out + layer_norm("ln_f", "final_norm")
