"""Little-GPT (PyTorch) state dict <-> gpt_plugin params (original-project.md §8.4; tree: docs/DESIGN.md).

| Little-GPT key (torch shape)                   | gpt_plugin param (shape)                                     |
|------------------------------------------------|--------------------------------------------------------------|
| `wte.weight` (V, D)                            | `token_embedder/embedding` (V', D): zero rows appended (V' >= V) |
| `wte.norm.{weight,bias}` (1B* StableEmbedding) | `embedding_norm/{scale,bias}` (`embedding_layer_norm=True`)  |
| `wpe.weight` (ctx, D) (non-ALiBi models only)  | `position_embedder/embedding`                               |
| `blocks.L.ln1.{weight,bias}`                   | `layers_L/input_norm/{scale,bias}`                           |
| `blocks.L.ln2.{weight,bias}` (sequential only) | `layers_L/mlp_norm/{scale,bias}`                             |
| `blocks.L.attn.{query,key,value}.weight` (D,D) | `layers_L/attention/qkv/kernel[:, 0|1|2, :]` = weight.T      |
| `blocks.L.attn.{query,key,value}.bias`         | `layers_L/attention/qkv/bias[0|1|2]`                         |
| `blocks.L.attn.fc_resid.{weight,bias}`         | `layers_L/attention/out/{kernel (= weight.T), bias}`         |
| `blocks.L.mlp.fc1.{weight,bias}` (4D,D)        | `layers_L/mlp/wi/{kernel (= weight.T), bias}`                |
| `blocks.L.mlp.fc_resid.{weight,bias}` (D,4D)   | `layers_L/mlp/wo/{kernel (= weight.T), bias}`                |
| `norm.{weight,bias}`                           | `final_norm/{scale,bias}`                                    |
| `lm_head.weight` (tied to `wte.weight`)        | dropped on import (must equal `wte.weight`); re-created, tied, on export |
| `blocks.L.attn.slopes` (H), `.mask` (1,1,ctx,ctx) | dropped on import (slopes checked against the head count); re-created on export |

8-bit checkpoints (Little-GPT's `1B_weights_8bit.pth.tar`, `FrozenBNBLinear` layers): a `<name>.weight` stored as
uint8 (or int8) bytes with sibling `<name>.absmax` / `<name>.code` buffers is dequantized in numpy first
(`dequantize_8bit`): value = code[byte] * absmax[flat_index // blocksize], reshaped to the weight's shape.

With `scan_layers=True` every `layers_L/...` leaf is stacked into `layers/...` with a leading layer axis.
Head order inside `joined_kv` is the torch `view(B, T, H, D/H)` order, so no permutation is needed.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_dtypes
import numpy as np

from gpt_plugin import params_io
from gpt_plugin.layers.alibi import alibi_slopes
from gpt_plugin.network import GPTConfig
from gpt_plugin.params_io import abstract_params, flatten, unflatten  # noqa: F401  (re-exported)

LITTLEGPT_VOCAB_SIZE = 50257  # GPT-2 BPE, Little-GPT's embedding rows
LITTLEGPT_NUM_CTX = 512  # the size of Little-GPT's `attn.mask` buffer for the * models
_PREFIXES = ("module.", "_orig_mod.")  # DDP / accelerate wrapper, torch.compile wrapper
_QKV = ("query", "key", "value")  # index 0/1/2 of our `stack` axis
# Block sizes of bitsandbytes' blockwise quantization: 4096 (the default of every version, the only one of the
# 2021-22 releases Little-GPT used) first, then the smaller ones later releases' GPU kernels accept (their CPU path
# takes any size; such files are rejected, naming the param).
BLOCKWISE_BLOCKSIZES = (4096, 2048, 1024, 512, 256, 128, 64)
QUANTIZATION_FORMAT = "bitsandbytes-blockwise-8bit"


class ConversionError(params_io.ParamsMismatchError):
  """The checkpoint does not match the model: lists every missing, unexpected or mis-shaped entry."""


def _fail(title: str, problems):
  raise ConversionError(params_io.mismatch_message(title, problems))


# ------------------------------------------------------------------------------------------ our side
def check_params(params: Mapping[str, Any], config: GPTConfig, what: str = "params") -> None:
  """Raises ConversionError listing params missing from / unexpected in / mis-shaped for `config`'s model."""
  params_io.check_params_against(config, params, what=what, error=ConversionError)


def is_scanned(params: Mapping[str, Any]) -> bool:
  return "layers" in params and not any(k.startswith("layers_") for k in params)


def layer_list(params: Mapping[str, Any]) -> list:
  """The per-layer param dicts, whichever layout (`layers_i` or stacked `layers`)."""
  if is_scanned(params):
    stacked = params["layers"]
    n = {np.shape(x)[0] for x in jax.tree.leaves(stacked)}
    if len(n) != 1:
      raise ConversionError(f"stacked 'layers' params disagree on the number of layers: {sorted(n)}")
    count = n.pop()
    return [jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(count)]
  idx = sorted(int(k[len("layers_") :]) for k in params if re.fullmatch(r"layers_\d+", k))
  if idx != list(range(len(idx))):
    raise ConversionError(f"layer indices are not 0..N-1: {idx}")
  return [params[f"layers_{i}"] for i in idx]


def with_layers(params: Mapping[str, Any], layers: list, scanned: bool) -> Dict[str, Any]:
  """`params` with its blocks replaced by `layers` (a list of per-layer dicts) in the requested layout."""
  out = {k: v for k, v in params.items() if k != "layers" and not re.fullmatch(r"layers_\d+", k)}
  if scanned:
    out["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
  else:
    for i, layer in enumerate(layers):
      out[f"layers_{i}"] = layer
  return out


# ------------------------------------------------------------------------------------------ torch side
def torch_shapes(config: GPTConfig, vocab_size: int = LITTLEGPT_VOCAB_SIZE) -> Dict[str, Tuple[int, ...]]:
  """Required Little-GPT state-dict entries (parameters, not buffers) for `config` and their shapes."""
  if config.use_static_sgu or config.head_qk_trick:
    raise ConversionError("Little-GPT has no static SGU / head-QK layers; turn use_static_sgu / head_qk_trick off")
  d, m = config.emb_dim, config.mlp_width
  shapes = {"wte.weight": (vocab_size, d), "norm.weight": (d,), "norm.bias": (d,)}
  if config.embedding_layer_norm:
    shapes.update({"wte.norm.weight": (d,), "wte.norm.bias": (d,)})
  if config.position_embedding == "learned":
    shapes["wpe.weight"] = (config.max_position_embeddings, d)
  for i in range(config.num_layers):
    p = f"blocks.{i}."
    norms = ("ln1",) if config.block_type == "parallel" else ("ln1", "ln2")
    for ln in norms:
      shapes.update({f"{p}{ln}.weight": (d,), f"{p}{ln}.bias": (d,)})
    for name in _QKV + ("fc_resid",):
      shapes.update({f"{p}attn.{name}.weight": (d, d), f"{p}attn.{name}.bias": (d,)})
    shapes.update(
      {
        f"{p}mlp.fc1.weight": (m, d),
        f"{p}mlp.fc1.bias": (m,),
        f"{p}mlp.fc_resid.weight": (d, m),
        f"{p}mlp.fc_resid.bias": (d,),
      }
    )
  return shapes


def strip_wrappers(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """Removes a `module.` (DDP/accelerate) or `_orig_mod.` (torch.compile) prefix shared by every key."""
  sd = dict(state_dict)
  changed = True
  while changed and sd:
    changed = False
    for p in _PREFIXES:
      if all(k.startswith(p) for k in sd):
        sd = {k[len(p) :]: v for k, v in sd.items()}
        changed = True
  # FrozenStableEmbedding (CPU fallback of the 1B* embedding) names its LayerNorm `ln_weight` / `ln_bias`.
  for old, new in (("wte.ln_weight", "wte.norm.weight"), ("wte.ln_bias", "wte.norm.bias")):
    if old in sd and new not in sd:
      sd[new] = sd.pop(old)
  return sd


def infer_blocksize(numel: int, num_blocks: int) -> Optional[int]:
  """The blocksize of `BLOCKWISE_BLOCKSIZES` that splits `numel` values into `num_blocks` blocks (ceil), or None.

  Only a single-block tensor fits several sizes, and then they all mean the same thing (4096 is returned)."""
  for b in BLOCKWISE_BLOCKSIZES:
    if -(-numel // b) == num_blocks:
      return b
  return None


def dequantize_blockwise(weight, absmax, code, blocksize: Optional[int] = None) -> np.ndarray:
  """bitsandbytes-style blockwise 8-bit dequantization in numpy (float32, the weight's shape).

  The flattened weight is cut into blocks of `blocksize` values (the last one may be short); value i is
  `code[byte_i] * absmax[i // blocksize]`. Bytes are read unsigned: an int8 tensor is taken bit for bit, as
  bitsandbytes' kernels read it. Chunked quantization (one `quantize_blockwise` call per chunk of a multiple of
  the blocksize, absmax concatenated) gives the same layout. `blocksize=None` infers it from the sizes."""
  weight, absmax, code = np.asarray(weight), np.asarray(absmax), np.asarray(code)
  if weight.dtype not in (np.uint8, np.int8):
    raise ConversionError(f"8-bit weight must be uint8/int8, not {weight.dtype}")
  idx = weight.reshape(-1).view(np.uint8)
  n, nb = idx.size, absmax.size
  if blocksize is None:
    blocksize = infer_blocksize(n, nb)
    if blocksize is None:
      raise ConversionError(f"{n} values with {nb} absmax entries fit no blocksize of {BLOCKWISE_BLOCKSIZES}")
  elif -(-n // blocksize) != nb:
    raise ConversionError(f"{n} values in blocks of {blocksize} need {-(-n // blocksize)} absmax entries, not {nb}")
  if code.size != 256:
    raise ConversionError(f"the code table has {code.size} entries, not 256")
  values = code.reshape(-1).astype(np.float32)[idx]
  pad = nb * blocksize - n
  if pad:
    values = np.concatenate([values, np.zeros(pad, np.float32)])
  values = values.reshape(nb, blocksize) * absmax.reshape(-1).astype(np.float32)[:, None]
  return values.reshape(-1)[:n].reshape(weight.shape)


def dequantize_8bit(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
  """Replaces every 8-bit `<name>.weight` (uint8/int8 with `<name>.absmax` and `<name>.code`) by its float32
  dequantization and drops the `absmax` / `code` buffers. Returns (state dict, report); the report is None when
  nothing was quantized, else {"format", "params": {name: blocksize}, "tolerance": {name: per-element bound}}
  (the tolerance, half the widest code gap times the block's absmax, is kept for the tied-head check).
  Raises ConversionError naming every 8-bit param that cannot be dequantized."""
  sd = dict(state_dict)
  stems = sorted({k[: -len(s)] for k in sd for s in (".absmax", ".code") if k.endswith(s)})
  if not stems:
    return sd, None
  problems, blocksizes, tolerance = [], {}, {}
  for stem in stems:
    w, a, c = (f"{stem}.{x}" for x in ("weight", "absmax", "code"))
    missing = [k for k in (w, a, c) if k not in sd]
    if missing:
      problems.append(
        f"incomplete 8-bit param: {stem} has {', '.join(k for k in (w, a, c) if k in sd)} but no {', '.join(missing)}"
      )
      continue
    weight, absmax, code = (np.asarray(sd[k]) for k in (w, a, c))
    if weight.dtype not in (np.uint8, np.int8):
      problems.append(
        f"wrong dtype: {w} is {weight.dtype}, but {stem} has absmax/code buffers (8-bit weights are uint8/int8)"
      )
      continue
    if absmax.dtype.kind != "f" or code.dtype.kind != "f":
      problems.append(
        f"unsupported 8-bit param: {stem}: absmax {absmax.dtype} / code {code.dtype} (nested or "
        "non-float quantization state); expected floating point"
      )
      continue
    if code.size != 256:
      problems.append(f"unsupported 8-bit param: {stem}: code has {code.size} entries, not 256")
      continue
    bs = infer_blocksize(weight.size, absmax.size)
    if bs is None:
      problems.append(
        f"unsupported 8-bit param: {w}: {weight.size} values {tuple(weight.shape)} with "
        f"{absmax.size} absmax entries fit no blockwise blocksize of {BLOCKWISE_BLOCKSIZES}"
      )
      continue
    sd[w] = dequantize_blockwise(weight, absmax, code, bs)
    del sd[a], sd[c]
    gap = float(np.max(np.diff(np.sort(code.reshape(-1).astype(np.float64))))) / 2
    tolerance[w] = (gap, absmax.reshape(-1).astype(np.float32), bs)
    blocksizes[w] = bs
  if problems:
    _fail("the 8-bit Little-GPT state dict cannot be dequantized", problems)
  return sd, {"format": QUANTIZATION_FORMAT, "params": blocksizes, "tolerance": tolerance}


def quantization_info(report: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
  """The JSON-able part of a `dequantize_8bit` report (for convert_info.json), or None."""
  if not report:
    return None
  sizes = collections.Counter(report["params"].values())
  return {
    "format": report["format"],
    "num_params": len(report["params"]),
    "blocksizes": {str(k): v for k, v in sorted(sizes.items())},
    "params": sorted(report["params"]),
    "note": "8-bit weights were dequantized (code[byte] * absmax[block]) to float32 before conversion",
  }


def _within_quantization_error(a, b, tolerances) -> bool:
  """|a - b| <= the sum of the rounding bounds (half the widest code gap times the block's absmax) of `tolerances`."""
  bound = np.full(np.shape(a), 1e-7, np.float32)
  for gap, absmax, bs in tolerances:
    bound += np.repeat(absmax, bs)[: bound.size].reshape(bound.shape) * np.float32(gap * 1.0001)
  return bool(np.all(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)) <= bound))


def infer_config(state_dict: Mapping[str, Any], base: Optional[GPTConfig] = None, **overrides) -> GPTConfig:
  """A GPTConfig read off a Little-GPT state dict: width, depth, MLP width, block type, embedding LayerNorm,
  positions, head count (from the `attn.slopes` buffer; 8, Little-GPT's * models, without it). The rest
  (epsilon 1e-5, exact GELU, vocab padded to a multiple of 128) follows Little-GPT."""
  sd = strip_wrappers(state_dict)
  if "wte.weight" not in sd:
    raise ConversionError("cannot infer the model: no 'wte.weight' in the state dict")
  vocab, d = np.shape(sd["wte.weight"])
  layers = sorted({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
  fields = dict(
    vocab_size=-(-vocab // 128) * 128,
    emb_dim=d,
    num_layers=(layers[-1] + 1) if layers else 0,
    block_type="sequential" if "blocks.0.ln2.weight" in sd else "parallel",
    position_embedding="learned" if "wpe.weight" in sd else "alibi",
    embedding_layer_norm="wte.norm.weight" in sd,
    layer_norm_epsilon=1e-5,
    gelu_approximate=False,
    num_heads=int(np.shape(sd["blocks.0.attn.slopes"])[0]) if "blocks.0.attn.slopes" in sd else 8,
  )
  if "blocks.0.mlp.fc1.weight" in sd and np.shape(sd["blocks.0.mlp.fc1.weight"])[0] != 4 * d:
    fields["mlp_dim"] = int(np.shape(sd["blocks.0.mlp.fc1.weight"])[0])
  if "wpe.weight" in sd:
    fields["max_position_embeddings"] = int(np.shape(sd["wpe.weight"])[0])
  fields.update(overrides)
  if base is not None:
    return dataclasses.replace(base, **fields)
  return GPTConfig(**fields)


def from_torch(
  state_dict: Mapping[str, Any],
  config: GPTConfig,
  *,
  param_dtype=np.float32,
  check_tied: bool = True,
  quantization: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
  """Little-GPT state dict (name -> array) to our params (nested dict of numpy arrays) for `config`.

  Raises ConversionError listing every missing, unexpected and mis-shaped entry (all at once). `wte.weight`
  may have fewer rows than `config.vocab_size` (zero rows are appended); buffers are checked and dropped.
  8-bit (`FrozenBNBLinear`) weights are dequantized first (`dequantize_8bit`); an 8-bit `lm_head.weight` is
  checked to equal `wte.weight` up to its quantization error (`quantization`: the `dequantize_8bit` report of
  a state dict dequantized beforehand).
  """
  sd, report = dequantize_8bit(strip_wrappers(state_dict))
  sd = {k: np.asarray(v) for k, v in sd.items()}
  tolerance = {**((quantization or {}).get("tolerance") or {}), **((report or {}).get("tolerance") or {})}
  vocab = (
    np.shape(sd["wte.weight"])[0] if "wte.weight" in sd and np.ndim(sd["wte.weight"]) == 2 else LITTLEGPT_VOCAB_SIZE
  )
  required = torch_shapes(config, vocab)
  problems = _required_entry_problems(sd, required, vocab, config)
  problems += _extra_entry_problems(sd, required, vocab, config, check_tied, tolerance)
  if problems:
    _fail("the Little-GPT state dict does not match the model", problems)
  params = _params_from_checked_state_dict(sd, config, vocab, param_dtype)
  check_params(params, config, "converted params")
  return params


def _required_entry_problems(sd, required, vocab: int, config: GPTConfig) -> list[str]:
  """Missing, mis-shaped and non-float entries among those `config` needs, and an embedding larger than its vocab."""
  problems = []
  for k, shape in required.items():
    if k not in sd:
      problems.append(f"missing: {k} (expected shape {shape})")
    elif tuple(sd[k].shape) != shape:
      problems.append(f"wrong shape: {k}: {tuple(sd[k].shape)}, expected {shape}")
    elif sd[k].dtype.kind != "f" and sd[k].dtype != np.dtype(ml_dtypes.bfloat16):
      problems.append(f"wrong dtype: {k} is {sd[k].dtype} (quantized?); expected a floating-point tensor")
  if vocab > config.vocab_size:
    problems.append(f"wrong shape: wte.weight has {vocab} rows, more than the model's vocab_size={config.vocab_size}")
  return problems


def _extra_entry_problems(sd, required, vocab: int, config: GPTConfig, check_tied: bool, tolerance) -> list[str]:
  """Entries beyond those `config` needs: ALiBi slopes and mask buffers (checked, then dropped), the tied
  `lm_head.weight` (equal to `wte.weight`, or within its 8-bit quantization error), anything else is unexpected."""
  problems = []
  d = config.emb_dim
  slopes = alibi_slopes(config.num_heads)
  for k in sorted(set(sd) - set(required)):
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.(slopes|mask)", k)
    if m and int(m.group(1)) < config.num_layers:
      if m.group(2) == "slopes":
        if config.position_embedding != "alibi":
          problems.append(f"unexpected: {k} (ALiBi slopes, but the model uses learned positions)")
        elif sd[k].shape != slopes.shape:
          problems.append(
            f"wrong shape: {k}: {tuple(sd[k].shape)} means {sd[k].size} heads; the model has "
            f"num_heads={config.num_heads}"
          )
        elif not np.allclose(sd[k].astype(np.float32), slopes, rtol=1e-3):
          problems.append(f"wrong values: {k} are not the ALiBi slopes of {config.num_heads} heads")
      continue  # the causal mask buffer is recomputed; its size (Little-GPT's num_ctx) is irrelevant here
    if k == "lm_head.weight":
      if tuple(sd[k].shape) != (vocab, d):
        problems.append(f"wrong shape: {k}: {tuple(sd[k].shape)}, expected {(vocab, d)} (tied to wte.weight)")
      elif check_tied and "wte.weight" in sd and not np.array_equal(sd[k], sd["wte.weight"]):
        if k in tolerance and _within_quantization_error(
          sd[k], sd["wte.weight"], [tolerance[x] for x in (k, "wte.weight") if x in tolerance]
        ):
          continue  # an 8-bit copy of the tied embedding
        problems.append(f"untied: {k} differs from wte.weight; gpt_plugin ties the output head to the embedding")
      continue
    problems.append(f"unexpected: {k} (shape {tuple(sd[k].shape)})")
  return problems


def _params_from_checked_state_dict(sd, config: GPTConfig, vocab: int, param_dtype) -> Dict[str, Any]:
  """Our params from a state dict that passed the checks: dense kernels transposed, q/k/v stacked, the embedding
  padded with zero rows up to `config.vocab_size`."""
  d = config.emb_dim
  cast = lambda x: np.asarray(x).astype(param_dtype, copy=False)
  ln = lambda p: {"scale": cast(sd[f"{p}.weight"]).copy(), "bias": cast(sd[f"{p}.bias"]).copy()}
  dense = lambda p: {"kernel": cast(sd[f"{p}.weight"]).T.copy(), "bias": cast(sd[f"{p}.bias"]).copy()}
  wte = np.zeros((config.vocab_size, d), param_dtype)
  wte[:vocab] = cast(sd["wte.weight"])
  params: Dict[str, Any] = {"token_embedder": {"embedding": wte}, "final_norm": ln("norm")}
  if config.embedding_layer_norm:
    params["embedding_norm"] = ln("wte.norm")
  if config.position_embedding == "learned":
    params["position_embedder"] = {"embedding": cast(sd["wpe.weight"]).copy()}
  layers = []
  for i in range(config.num_layers):
    p = f"blocks.{i}"
    layer = {
      "input_norm": ln(f"{p}.ln1"),
      "attention": {
        "qkv": {
          "kernel": np.stack([cast(sd[f"{p}.attn.{n}.weight"]).T for n in _QKV], axis=1),
          "bias": np.stack([cast(sd[f"{p}.attn.{n}.bias"]) for n in _QKV], axis=0),
        },
        "out": dense(f"{p}.attn.fc_resid"),
      },
      "mlp": {"wi": dense(f"{p}.mlp.fc1"), "wo": dense(f"{p}.mlp.fc_resid")},
    }
    if config.block_type == "sequential":
      layer["mlp_norm"] = ln(f"{p}.ln2")
    layers.append(layer)
  return with_layers(params, layers, config.scan_layers)


def to_torch(
  params: Mapping[str, Any],
  config: GPTConfig,
  *,
  vocab_size: Optional[int] = LITTLEGPT_VOCAB_SIZE,
  buffers: bool = True,
  num_ctx: int = LITTLEGPT_NUM_CTX,
  lm_head: bool = True,
  dtype=np.float32,
) -> "collections.OrderedDict[str, np.ndarray]":
  """Our params (either layer layout) to a Little-GPT state dict (OrderedDict of numpy arrays).

  `vocab_size` crops the embedding (None keeps every row). With `buffers`, each block gets Little-GPT's
  `attn.slopes` (float32, H) and `attn.mask` (uint8 lower-triangular, (1, 1, num_ctx, num_ctx)), so the dict
  loads with `load_state_dict(strict=True)` into Little-GPT's `GPT2`. `lm_head.weight` is the same array as
  `wte.weight` (one storage in the saved file: still tied after loading).
  """
  params = {k: v for k, v in params.items()}
  scanned_config = dataclasses.replace(config, scan_layers=is_scanned(params))
  check_params(params, scanned_config, "params")
  torch_shapes(config)  # rejects SGU / head-QK models
  get = lambda x: np.asarray(x, dtype=np.float32).astype(dtype)
  sd: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
  wte = get(params["token_embedder"]["embedding"])
  if vocab_size is not None:
    if vocab_size > wte.shape[0]:
      raise ConversionError(f"cannot export {vocab_size} vocab rows: the model has {wte.shape[0]}")
    wte = np.ascontiguousarray(wte[:vocab_size])
  sd["wte.weight"] = wte
  if config.embedding_layer_norm:
    sd["wte.norm.weight"] = get(params["embedding_norm"]["scale"])
    sd["wte.norm.bias"] = get(params["embedding_norm"]["bias"])
  if config.position_embedding == "learned":
    sd["wpe.weight"] = get(params["position_embedder"]["embedding"])
  mask = np.tril(np.ones((num_ctx, num_ctx), np.uint8)).reshape(1, 1, num_ctx, num_ctx) if buffers else None
  slopes = alibi_slopes(config.num_heads).astype(np.float32)
  for i, layer in enumerate(layer_list(params)):
    p = f"blocks.{i}."
    norms = [("ln1", "input_norm")] + ([("ln2", "mlp_norm")] if config.block_type == "sequential" else [])
    for ln, ours in norms:
      sd[p + ln + ".weight"] = get(layer[ours]["scale"])
      sd[p + ln + ".bias"] = get(layer[ours]["bias"])
    qkv = layer["attention"]["qkv"]
    for j, n in enumerate(_QKV):
      sd[f"{p}attn.{n}.weight"] = np.ascontiguousarray(get(qkv["kernel"])[:, j, :].T)
      sd[f"{p}attn.{n}.bias"] = get(qkv["bias"])[j]
    sd[f"{p}attn.fc_resid.weight"] = np.ascontiguousarray(get(layer["attention"]["out"]["kernel"]).T)
    sd[f"{p}attn.fc_resid.bias"] = get(layer["attention"]["out"]["bias"])
    if buffers:
      if config.position_embedding == "alibi":
        sd[f"{p}attn.slopes"] = slopes
      sd[f"{p}attn.mask"] = mask
    for torch_name, ours in (("fc1", "wi"), ("fc_resid", "wo")):
      sd[f"{p}mlp.{torch_name}.weight"] = np.ascontiguousarray(get(layer["mlp"][ours]["kernel"]).T)
      sd[f"{p}mlp.{torch_name}.bias"] = get(layer["mlp"][ours]["bias"])
  sd["norm.weight"] = get(params["final_norm"]["scale"])
  sd["norm.bias"] = get(params["final_norm"]["bias"])
  if lm_head:
    sd["lm_head.weight"] = wte
  return sd
