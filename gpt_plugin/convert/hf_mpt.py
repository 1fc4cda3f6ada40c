"""MPT (`MptForCausalLM`) <-> gpt_plugin: sequential pre-LN blocks, ALiBi, no biases anywhere (`use_bias=False`,
LayerNorms included), exact GELU, optional q/k/v clamping (`clip_qkv`), tied head.

| HF tensor (base model)                  | gpt_plugin param                                          |
|-----------------------------------------|-----------------------------------------------------------|
| `wte.weight` (V, D)                     | `token_embedder/embedding`                                |
| `blocks.L.norm_1.weight`                | `layers_L/input_norm/scale`                               |
| `blocks.L.attn.Wqkv.weight` (3D, D)     | `layers_L/attention/qkv/kernel` (D, 3, D) = weight.T reshaped (outputs are [q | k | v]) |
| `blocks.L.attn.out_proj.weight`         | `layers_L/attention/out/kernel` (= weight.T)              |
| `blocks.L.norm_2.weight`                | `layers_L/mlp_norm/scale`                                 |
| `blocks.L.ffn.up_proj`, `.down_proj`    | `layers_L/mlp/wi/kernel`, `layers_L/mlp/wo/kernel`        |
| `norm_f.weight`                         | `final_norm/scale`                                        |

ALiBi: MPT's slopes (`build_mpt_alibi_tensor`) equal ours for every head count with the same `alibi_bias_max`
(tests/test_hf_convert.py checks it). transformers' MptForCausalLM ignores `attn_config.alibi_bias_max` (it always
uses 8); MosaicML's own code honours it, and so does the import (`alibi_max_bias`). The export refuses values
other than 8, which transformers would silently change.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Tuple

import numpy as np

from gpt_plugin.convert.hf_io import Entry, copy, get_key, linear
from gpt_plugin.network import GPTConfig

ARCHITECTURE = "MptForCausalLM"
MODEL_TYPE = "mpt"
EMBEDDING = "wte.weight"
DROPPED = re.compile(r"$^")
_NORM_TYPES = ("low_precision_layernorm", "layernorm")


def _attn_problems(attn: Dict[str, Any], head_dim: float) -> List[str]:
  problems = []
  if attn.get("attn_type", "multihead_attention") != "multihead_attention":
    problems.append(f"attn_config.attn_type={attn['attn_type']!r} (only 'multihead_attention')")
  for key in ("prefix_lm", "qk_ln"):
    if attn.get(key, False):
      problems.append(f"attn_config.{key}=true")
  if not attn.get("alibi", True):
    problems.append("attn_config.alibi=false (transformers' MPT always uses ALiBi; so does this import)")
  scale = attn.get("softmax_scale")
  if scale is not None and not math.isclose(float(scale), 1.0 / math.sqrt(head_dim), rel_tol=1e-6):
    problems.append(f"attn_config.softmax_scale={scale} (only 1/sqrt(head_dim) = {1.0 / math.sqrt(head_dim):.6g})")
  return problems


def config_from_hf(hf: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str], List[str]]:
  problems, notes = [], []
  emb = int(get_key(hf, "d_model", "hidden_size", default=2048))
  heads = int(get_key(hf, "n_heads", "num_attention_heads", default=16))
  attn = hf.get("attn_config") or {}
  problems += _attn_problems(attn, emb / heads)
  if hf.get("expansion_ratio", 4) != 4:
    problems.append(f"expansion_ratio={hf['expansion_ratio']} (transformers' MptMLP is always 4 x d_model)")
  if not hf.get("no_bias", True):
    problems.append("no_bias=false (transformers' MPT has no biases)")
  if hf.get("logit_scale") is not None:
    problems.append(f"logit_scale={hf['logit_scale']!r}")
  if hf.get("norm_type", "low_precision_layernorm") not in _NORM_TYPES:
    problems.append(f"norm_type={hf['norm_type']!r} (supported: {_NORM_TYPES})")
  if hf.get("emb_pdrop", 0.0):
    notes.append(f"emb_pdrop={hf['emb_pdrop']}: gpt_plugin has no embedding dropout; fine-tuning runs without it")
  if hf.get("embedding_fraction", 1.0) != 1.0:
    notes.append(f"embedding_fraction={hf['embedding_fraction']} only scales embedding gradients; not applied")
  bias_max = float(attn.get("alibi_bias_max", 8))
  if bias_max != 8.0:
    notes.append(
      f"attn_config.alibi_bias_max={attn['alibi_bias_max']}: imported as alibi_max_bias (MosaicML's meaning); "
      "transformers' MptForCausalLM ignores it and uses 8"
    )
  clip = attn.get("clip_qkv")
  fields = dict(
    vocab_size=int(hf.get("vocab_size", 50368)),
    emb_dim=emb,
    num_heads=heads,
    num_layers=int(get_key(hf, "n_layers", "num_hidden_layers", default=24)),
    mlp_dim=None,
    position_embedding="alibi",
    gelu_approximate=False,  # nn.GELU(approximate="none")
    use_bias=False,
    alibi_max_bias=bias_max,
    clip_qkv=None if not clip else float(clip),
    dropout_rate=float(hf.get("resid_pdrop", 0.0)),
    attention_dropout_rate=float(attn.get("attn_pdrop", 0.0)),
  )
  return fields, problems, notes


def mismatch(cfg: GPTConfig) -> List[str]:
  out = []
  if cfg.position_embedding != "alibi":
    out.append("MPT needs position_embedding='alibi'")
  if cfg.embedding_layer_norm:
    out.append("MPT has no embedding_layer_norm")
  if cfg.use_bias:
    out.append("MPT needs use_bias=False")
  if cfg.gelu_approximate:
    out.append("MPT needs gelu_approximate=False (exact GELU)")
  if cfg.mlp_width != 4 * cfg.emb_dim:
    out.append(f"MPT needs mlp_dim = 4 * emb_dim, got {cfg.mlp_width}")
  if cfg.alibi_max_bias != 8.0:
    out.append(f"alibi_max_bias={cfg.alibi_max_bias}: transformers' MPT always uses 8 (attn_config.alibi_bias_max)")
  return out


def config_to_hf(cfg: GPTConfig) -> Dict[str, Any]:
  """transformers 5.24 annotates attn_config.attn_pdrop as int and rejects 0.0: integral values are written as ints."""
  return {
    "d_model": cfg.emb_dim,
    "n_heads": cfg.num_heads,
    "n_layers": cfg.num_layers,
    "expansion_ratio": 4,
    "no_bias": True,
    "learned_pos_emb": False,
    "resid_pdrop": cfg.dropout_rate,
    "emb_pdrop": 0.0,
    "attn_config": {
      "attn_type": "multihead_attention",
      "alibi": True,
      "alibi_bias_max": 8,
      "clip_qkv": cfg.clip_qkv,
      "softmax_scale": None,
      "attn_pdrop": int(cfg.attention_dropout) if float(cfg.attention_dropout).is_integer() else cfg.attention_dropout,
      "prefix_lm": False,
      "qk_ln": False,
    },
  }


def _kernel_in(w):  # (3D, D) -> (D, 3, D)
  return np.asarray(w).T.reshape(w.shape[1], 3, -1)


def _kernel_out(k):
  return np.ascontiguousarray(np.asarray(k).reshape(k.shape[0], -1).T)


def entries(cfg: GPTConfig) -> List[Entry]:
  out = [copy("wte.weight", "token_embedder/embedding")]
  for i in range(cfg.num_layers):
    b, ours = f"blocks.{i}.", f"layers_{i}/"
    out += [
      copy(b + "norm_1.weight", ours + "input_norm/scale"),
      Entry(b + "attn.Wqkv.weight", ours + "attention/qkv/kernel", _kernel_in, _kernel_out),
      linear(b + "attn.out_proj.weight", ours + "attention/out/kernel"),
      copy(b + "norm_2.weight", ours + "mlp_norm/scale"),
      linear(b + "ffn.up_proj.weight", ours + "mlp/wi/kernel"),
      linear(b + "ffn.down_proj.weight", ours + "mlp/wo/kernel"),
    ]
  return out + [copy("norm_f.weight", "final_norm/scale")]
