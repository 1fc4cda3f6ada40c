"""Hugging Face model directories on disk: `config.json`, weights and tokenizer files, without transformers or torch.

Weights are read from `model.safetensors` (the `safetensors` package, numpy API) or `pytorch_model.bin` (the
restricted archive reader `gpt_plugin.torch_archive`, which never runs pickle code), each possibly sharded
(`*.index.json` with a `weight_map`). They are written as one `model.safetensors` (metadata `format: pt`, what
transformers' `from_pretrained` expects).

The name <-> param mapping shared by the families is a list of `Entry` (HF tensor name, our '/'-joined param path,
a pair of functions HF array -> ours and back); each family module (`hf_gpt2`, `hf_bloom`, `hf_mpt`) builds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from gpt_plugin import params_io
from gpt_plugin.errors import UserError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
WEIGHT_FILES = (SAFETENSORS_FILE, "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BASE_PREFIX = "transformer."  # *ForCausalLM wraps the base model under this name; bare base-model files lack it
LM_HEAD = "lm_head.weight"


class HFConversionError(UserError, params_io.ParamsMismatchError):
  """A Hugging Face directory or model cannot be converted; the message names the file, key or feature."""


# ------------------------------------------------------------------------------------------ mapping
def _identity(x):
  return np.asarray(x)


def _transpose(x):
  return np.ascontiguousarray(np.asarray(x).T)


@dataclasses.dataclass(frozen=True)
class Entry:
  """HF tensor `hf` (base-model name, no `transformer.` prefix) <-> our param `ours`."""

  hf: str
  ours: str
  to_ours: Callable[[np.ndarray], np.ndarray] = _identity
  to_hf: Callable[[np.ndarray], np.ndarray] = _identity


def copy(hf: str, ours: str) -> Entry:
  return Entry(hf, ours)


def linear(hf: str, ours: str) -> Entry:
  """torch `nn.Linear.weight` (out, in) <-> our Dense kernel (in, out)."""
  return Entry(hf, ours, _transpose, _transpose)


def layer_norm(hf: str, ours: str) -> List[Entry]:
  """torch `nn.LayerNorm` `{weight,bias}` <-> our LayerNorm `{scale,bias}`."""
  return [copy(hf + ".weight", ours + "/scale"), copy(hf + ".bias", ours + "/bias")]


def with_bias(make: Callable[[str, str], Entry], hf: str, ours: str) -> List[Entry]:
  """A projection's weight (mapped by `make`: `copy` or `linear`) and bias <-> our `{kernel,bias}`."""
  return [make(hf + ".weight", ours + "/kernel"), copy(hf + ".bias", ours + "/bias")]


def tensors_to_params(tensors: Mapping[str, np.ndarray], entries: Sequence[Entry], source: str) -> Dict[str, Any]:
  """Our (unflattened, per-layer `layers_i`) param tree from base-model tensors; every entry must be present with
  a consistent shape and nothing may be left over (the message lists every problem)."""
  problems = [f"missing {e.hf!r}" for e in entries if e.hf not in tensors]
  known = {e.hf for e in entries}
  problems += [f"unexpected {k!r} {tuple(np.shape(v))}" for k, v in tensors.items() if k not in known]
  if problems:
    raise HFConversionError(params_io.mismatch_message(f"{source} does not match its config.json", problems))
  flat = {}
  for e in entries:
    try:
      flat[e.ours] = np.asarray(e.to_ours(tensors[e.hf]), np.float32)
    except ValueError as err:  # a reshape that does not fit: the tensor disagrees with config.json
      raise HFConversionError(f"{source}: tensor {e.hf!r} of shape {np.shape(tensors[e.hf])}: {err}") from err
  return params_io.unflatten(flat)


def params_to_tensors(params: Mapping[str, Any], entries: Sequence[Entry], dtype=np.float32) -> Dict[str, np.ndarray]:
  """Base-model tensors (with the `transformer.` prefix of *ForCausalLM) from our per-layer param tree."""
  flat = params_io.flatten(params)
  missing = [e.ours for e in entries if e.ours not in flat]
  if missing:
    raise HFConversionError(params_io.mismatch_message("the params do not match their config", missing))
  return {BASE_PREFIX + e.hf: np.ascontiguousarray(np.asarray(e.to_hf(flat[e.ours])).astype(dtype)) for e in entries}


# ------------------------------------------------------------------------------------------ reading
def read_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise HFConversionError(f"{hf_dir}: no {CONFIG_FILE} (not a Hugging Face model directory)")
  try:
    with open(path) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise HFConversionError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(config, dict):
    raise HFConversionError(f"{path}: expected a JSON object, got {type(config).__name__}")
  return config


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  out = {}
  with safe_open(path, framework="numpy") as f:
    for name in f.keys():
      try:
        out[name] = f.get_tensor(name)
      except TypeError:  # numpy has no bfloat16: read that tensor through the flax (jax) view, then back to numpy
        with safe_open(path, framework="flax") as fj:
          out[name] = np.asarray(fj.get_tensor(name))
  return out


def _read_one(path: str) -> Dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise HFConversionError(f"weights file {path} is missing")
  if path.endswith(".safetensors"):
    try:
      return _read_safetensors(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      if isinstance(e, HFConversionError):
        raise
      raise HFConversionError(f"{path}: cannot read safetensors file ({e})") from e
  from gpt_plugin import torch_archive  # pylint: disable=import-outside-toplevel

  return torch_archive.read_state_dict(path, key=None)


def _read_sharded(index_path: str) -> Dict[str, np.ndarray]:
  with open(index_path) as f:
    try:
      weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise HFConversionError(f"{index_path}: not a shard index with a 'weight_map' ({e})") from e
  out: Dict[str, np.ndarray] = {}
  folder = os.path.dirname(index_path)
  for shard in sorted(set(weight_map.values())):
    for name, value in _read_one(os.path.join(folder, shard)).items():
      if weight_map.get(name) == shard:
        out[name] = value
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise HFConversionError(f"{index_path}: tensors listed but absent from their shard: {missing[:10]}")
  return out


def read_weights(hf_dir: str) -> Dict[str, np.ndarray]:
  """All tensors of the directory's checkpoint, first of WEIGHT_FILES found (safetensors preferred)."""
  for name in WEIGHT_FILES:
    path = os.path.join(hf_dir, name)
    if os.path.isfile(path):
      return _read_sharded(path) if name.endswith(".index.json") else _read_one(path)
  raise HFConversionError(f"{hf_dir}: no weights (looked for {', '.join(WEIGHT_FILES)})")


def split_lm_head(tensors: Mapping[str, np.ndarray], source: str) -> Dict[str, np.ndarray]:
  """Base-model tensors without the `transformer.` prefix, `lm_head.weight` left out (it must equal the tied token
  embedding: see `check_tied_head`)."""
  has_prefix = any(k.startswith(BASE_PREFIX) for k in tensors)
  out = {}
  for k, v in tensors.items():
    if k == LM_HEAD:
      continue
    if has_prefix and not k.startswith(BASE_PREFIX):
      raise HFConversionError(f"{source}: unexpected tensor {k!r} outside the base model")
    out[k[len(BASE_PREFIX) :] if has_prefix else k] = v
  return out


def check_tied_head(tensors: Mapping[str, np.ndarray], embedding: np.ndarray, source: str) -> None:
  head = tensors.get(LM_HEAD)
  if head is not None and not np.array_equal(np.asarray(head), np.asarray(embedding)):
    raise HFConversionError(
      f"{source}: {LM_HEAD} differs from the token embedding, but gpt_plugin ties the output layer to it "
      "(tie_word_embeddings=true is required)"
    )


def get_key(config: Mapping[str, Any], *names: str, default: Any = None):
  """The first of `names` present in `config` (HF configs accept aliases, e.g. BLOOM's n_embed / hidden_size)."""
  for name in names:
    if name in config:
      return config[name]
  return default


def refuse(problems: List[str], source: str) -> None:
  if problems:
    raise HFConversionError(f"{source}: not supported: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------ writing
def write_model_dir(out_dir: str, config: dict, tensors: Dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, SAFETENSORS_FILE), metadata={"format": "pt"})
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)


def copy_tokenizer(src_dir: Optional[str], out_dir: str) -> List[str]:
  """Copies the tokenizer files present in `src_dir` to `out_dir`; returns the names copied."""
  copied = []
  if src_dir and os.path.isdir(src_dir):
    for name in TOKENIZER_FILES:
      path = os.path.join(src_dir, name)
      if os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(os.path.join(out_dir, name)):
        os.makedirs(out_dir, exist_ok=True)
        shutil.copyfile(path, os.path.join(out_dir, name))
        copied.append(name)
  return copied
