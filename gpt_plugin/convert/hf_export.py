"""`python -m gpt_plugin.convert to-hf CHECKPOINT OUT_DIR`: our params -> a directory transformers loads with
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` (config.json, model.safetensors, tokenizer files).

CHECKPOINT is anything `params_io.load_params` reads (a from-hf OUT_DIR, a training MODEL_DIR, a checkpoint, a
.msgpack). The model comes from `--gin_file` (e.g. OUT_DIR/model.gin, or the gin files a model was trained with)
or from the checkpoint's convert_info.json. The family is chosen from the architecture:
  GPT2LMHeadModel   learned positions, biases, no embedding LayerNorm
  BloomForCausalLM  ALiBi, biases, embedding LayerNorm, tanh GELU, MLP 4 x emb_dim
  MptForCausalLM    ALiBi, no biases, exact GELU, MLP 4 x emb_dim (clip_qkv allowed)
all with sequential blocks and the output layer tied to the embedding. The static SGU, head-QK and parallel blocks
have no counterpart there and are refused, naming the feature; so is a model matching no family (with the reasons).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, Optional, Tuple

import numpy as np

from gpt_plugin import params_io
from gpt_plugin.convert import hf_io
from gpt_plugin.convert.hf_import import FAMILIES
from gpt_plugin.convert.hf_io import HFConversionError
from gpt_plugin.network import GPTConfig

DTYPES = {"float32": np.float32, "float16": np.float16}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>")


def family_of_model(cfg: GPTConfig):
  """The family module `cfg` matches; raises HFConversionError naming the features without a counterpart."""
  features = []
  if cfg.use_static_sgu:
    features.append("the static SGU (use_static_sgu=True)")
  if cfg.head_qk_trick:
    features.append("the head-QK trick (head_qk_trick=True)")
  if cfg.block_type == "parallel":
    features.append("parallel blocks (block_type='parallel')")
  if features:
    raise HFConversionError(
      f"the model uses {', '.join(features)}, which GPT-2, BLOOM and MPT in transformers do not have"
    )
  reasons = {}
  for arch, family in FAMILIES.items():
    why = family.mismatch(cfg)
    if not why:
      return family
    reasons[arch] = why
  raise HFConversionError(
    "the model matches none of the transformers families: "
    + "; ".join(f"{a}: {', '.join(r)}" for a, r in reasons.items())
  )


def export_hf(
  params: Dict[str, Any], cfg: GPTConfig, base_config: Optional[dict] = None, dtype=np.float32
) -> Tuple[dict, Dict[str, np.ndarray]]:
  """(config.json dict, safetensors tensors). `base_config` (the imported config.json) keeps the keys we do not
  model (token ids, names) when it is of the same architecture."""
  from gpt_plugin.convert import littlegpt  # pylint: disable=import-outside-toplevel

  family = family_of_model(cfg)
  if littlegpt.is_scanned(params):
    params = littlegpt.with_layers(params, littlegpt.layer_list(params), False)
  tensors = hf_io.params_to_tensors(params, family.entries(cfg), dtype)
  config = {}
  if base_config and family.ARCHITECTURE in (base_config.get("architectures") or []):
    config = dict(base_config)
  config.update(  # written alike for every family, then the family's own keys
    architectures=[family.ARCHITECTURE],
    model_type=family.MODEL_TYPE,
    vocab_size=cfg.vocab_size,
    layer_norm_epsilon=cfg.layer_norm_epsilon,
    initializer_range=cfg.init_std,
    tie_word_embeddings=True,
    **family.config_to_hf(cfg),
  )
  config["dtype"] = np.dtype(dtype).name
  for key in TOKEN_ID_KEYS:  # absent keys would take transformers' family defaults (GPT-2: 50256), out of range here
    config.setdefault(key, None)
  return config, tensors


def tokenizer_eos(tokenizer_json: str):
  """(token, id) of the first of EOS_TOKENS among the special tokens of a tokenizer.json, else (None, None)."""
  with open(tokenizer_json) as f:
    added = {t.get("content"): t.get("id") for t in json.load(f).get("added_tokens", [])}
  return next(((t, added[t]) for t in EOS_TOKENS if t in added), (None, None))


def complete_tokenizer(out_dir: str, config: dict) -> None:
  """With a tokenizer.json: the config's eos_token_id when unset, and a minimal tokenizer_config.json when none
  was copied (so that `AutoTokenizer.from_pretrained(out_dir)` loads it as a fast tokenizer)."""
  tok_file = os.path.join(out_dir, "tokenizer.json")
  if not os.path.isfile(tok_file):
    return
  eos_token, eos_id = tokenizer_eos(tok_file)
  if config.get("eos_token_id") is None:
    config["eos_token_id"] = eos_id
  tok_config = os.path.join(out_dir, "tokenizer_config.json")
  if not os.path.isfile(tok_config):
    with open(tok_config, "w") as f:
      json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token}, f, indent=2)


def _tokenizer_source(args, info: Optional[dict]) -> Optional[str]:
  if args.tokenizer:
    return args.tokenizer
  if info and info.get("source_format") == "huggingface":
    return info.get("out_dir")  # the from-hf OUT_DIR holds the copied tokenizer files
  return None


def _hf_source_info(args) -> Optional[dict]:
  """convert_info.json of the from-hf OUT_DIR named by the model gin's HF_SOURCE macro, if any."""
  if not args.gin_file:
    return None
  import gin  # pylint: disable=import-outside-toplevel

  try:
    source = gin.query_parameter("%HF_SOURCE")
  except ValueError:
    return None
  info = params_io.read_info(source) if isinstance(source, str) else None
  if info is not None:
    info = dict(info, out_dir=source)
  return info


def write_tokenizer(source: Optional[str], out_dir: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  if not source:
    return "no tokenizer files (give --tokenizer=tokenizer.json or a directory)"
  if os.path.isfile(source):
    shutil.copyfile(source, os.path.join(out_dir, "tokenizer.json"))
    return "tokenizer.json"
  if not os.path.isdir(source):
    raise HFConversionError(f"--tokenizer {source}: no such file or directory")
  copied = hf_io.copy_tokenizer(source, out_dir)
  return ", ".join(copied) if copied else f"no tokenizer files in {source}"


def run_to_hf(args, config_fn) -> None:
  """`config_fn(args, info)`: the GPTConfig from --gin_file or convert_info.json (convert's `_config`)."""
  params, where = params_io.load_params(args.checkpoint, step=args.step)
  info = params_io.read_info(args.checkpoint) or params_io.read_info(where)
  if info is not None and info.get("source_format") == "huggingface":
    info = dict(info, out_dir=os.path.dirname(os.path.normpath(where)))
  cfg = config_fn(args, info)
  info = info or _hf_source_info(args)
  from gpt_plugin.convert import littlegpt  # pylint: disable=import-outside-toplevel

  cfg = dataclasses.replace(cfg, scan_layers=littlegpt.is_scanned(params))
  params_io.check_params_against(cfg, params, what=f"params of {where}", error=HFConversionError)
  config, tensors = export_hf(params, cfg, (info or {}).get("hf_config"), DTYPES[args.dtype])
  out_dir = os.path.abspath(args.out_dir)
  tok = write_tokenizer(_tokenizer_source(args, info), out_dir)
  complete_tokenizer(out_dir, config)
  hf_io.write_model_dir(out_dir, config, tensors)
  print(f"wrote {out_dir} ({config['architectures'][0]}, {len(tensors)} tensors, {args.dtype}; {tok}) from {where}")
