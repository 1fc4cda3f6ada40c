"""GPT-2 (`GPT2LMHeadModel`) <-> gpt_plugin: sequential pre-LN blocks, learned absolute positions, biases, tied head.

| HF tensor (base model)                | gpt_plugin param                                              |
|---------------------------------------|---------------------------------------------------------------|
| `wte.weight` (V, D)                   | `token_embedder/embedding`                                    |
| `wpe.weight` (n_positions, D)         | `position_embedder/embedding`                                 |
| `h.L.ln_1.{weight,bias}`              | `layers_L/input_norm/{scale,bias}`                            |
| `h.L.attn.c_attn.{weight (D, 3D), bias}` | `layers_L/attention/qkv/{kernel (D, 3, D), bias (3, D)}` (Conv1D is (in, out): a reshape) |
| `h.L.attn.c_proj.{weight,bias}`       | `layers_L/attention/out/{kernel,bias}`                        |
| `h.L.ln_2.{weight,bias}`              | `layers_L/mlp_norm/{scale,bias}`                              |
| `h.L.mlp.c_fc`, `h.L.mlp.c_proj`      | `layers_L/mlp/wi`, `layers_L/mlp/wo`                          |
| `ln_f.{weight,bias}`                  | `final_norm/{scale,bias}`                                     |
`h.L.attn.bias` / `h.L.attn.masked_bias` (causal-mask buffers of older files) are dropped.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

from gpt_plugin.convert.hf_io import Entry, copy, get_key, layer_norm, with_bias
from gpt_plugin.network import GPTConfig

ARCHITECTURE = "GPT2LMHeadModel"
MODEL_TYPE = "gpt2"
EMBEDDING = "wte.weight"
DROPPED = re.compile(r"h\.\d+\.attn\.(masked_)?bias")
_GELU = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True, "gelu": False}


def config_from_hf(hf: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str], List[str]]:
  """(GPTConfig fields, refusals naming the config key, notes) for a GPT-2 config.json; the fields every family
  reads alike (block_type, layer_norm_epsilon, init_std) are hf_import.config_from_hf's."""
  problems, notes = [], []
  act = hf.get("activation_function", "gelu_new")
  if act not in _GELU:
    problems.append(f"activation_function={act!r} (supported: {sorted(_GELU)})")
  if not hf.get("scale_attn_weights", True):
    problems.append("scale_attn_weights=false (gpt_plugin always scales scores by 1/sqrt(head_dim))")
  if hf.get("scale_attn_by_inverse_layer_idx", False):
    problems.append("scale_attn_by_inverse_layer_idx=true")
  if hf.get("add_cross_attention", False):
    problems.append("add_cross_attention=true (no cross-attention in a decoder-only model)")
  if hf.get("embd_pdrop", 0.0):
    notes.append(f"embd_pdrop={hf['embd_pdrop']}: gpt_plugin has no embedding dropout; fine-tuning runs without it")
  fields = dict(
    vocab_size=int(hf.get("vocab_size", 50257)),
    emb_dim=int(get_key(hf, "n_embd", "hidden_size", default=768)),
    num_heads=int(get_key(hf, "n_head", "num_attention_heads", default=12)),
    num_layers=int(get_key(hf, "n_layer", "num_hidden_layers", default=12)),
    mlp_dim=hf.get("n_inner"),
    position_embedding="learned",
    max_position_embeddings=int(get_key(hf, "n_positions", "max_position_embeddings", default=1024)),
    gelu_approximate=_GELU.get(act, True),
    dropout_rate=float(hf.get("resid_pdrop", 0.1)),
    attention_dropout_rate=float(hf.get("attn_pdrop", 0.1)),
  )
  return fields, problems, notes


def mismatch(cfg: GPTConfig) -> List[str]:
  """Why `cfg` is not a GPT-2 model (empty: it is)."""
  out = []
  if cfg.position_embedding != "learned":
    out.append("GPT-2 needs position_embedding='learned'")
  if cfg.embedding_layer_norm:
    out.append("GPT-2 has no embedding_layer_norm")
  if not cfg.use_bias:
    out.append("GPT-2 needs use_bias=True")
  if cfg.clip_qkv is not None:
    out.append("GPT-2 has no clip_qkv")
  return out


def config_to_hf(cfg: GPTConfig) -> Dict[str, Any]:
  """The GPT-2 keys of config.json; those every family writes alike (architectures, vocab_size, ...) are
  hf_export.export_hf's."""
  return {
    "n_embd": cfg.emb_dim,
    "n_head": cfg.num_heads,
    "n_layer": cfg.num_layers,
    "n_inner": cfg.mlp_dim,
    "n_positions": cfg.max_position_embeddings,
    "activation_function": "gelu_new" if cfg.gelu_approximate else "gelu",
    "resid_pdrop": cfg.dropout_rate,
    "attn_pdrop": cfg.attention_dropout,
    "embd_pdrop": 0.0,
    "scale_attn_weights": True,
  }


def _qkv_kernel_in(w):
  return w.reshape(w.shape[0], 3, -1)


def _qkv_kernel_out(k):
  return k.reshape(k.shape[0], -1)


def _qkv_bias_in(b):
  return b.reshape(3, -1)


def _qkv_bias_out(b):
  return b.reshape(-1)


def entries(cfg: GPTConfig) -> List[Entry]:
  out = [copy("wte.weight", "token_embedder/embedding"), copy("wpe.weight", "position_embedder/embedding")]
  for i in range(cfg.num_layers):
    h, ours = f"h.{i}.", f"layers_{i}/"
    out += layer_norm(h + "ln_1", ours + "input_norm")
    out += [
      Entry(h + "attn.c_attn.weight", ours + "attention/qkv/kernel", _qkv_kernel_in, _qkv_kernel_out),
      Entry(h + "attn.c_attn.bias", ours + "attention/qkv/bias", _qkv_bias_in, _qkv_bias_out),
    ]
    out += with_bias(copy, h + "attn.c_proj", ours + "attention/out")  # Conv1D weights are (in, out) already
    out += layer_norm(h + "ln_2", ours + "mlp_norm")
    out += with_bias(copy, h + "mlp.c_fc", ours + "mlp/wi")
    out += with_bias(copy, h + "mlp.c_proj", ours + "mlp/wo")
  return out + layer_norm("ln_f", "final_norm")
