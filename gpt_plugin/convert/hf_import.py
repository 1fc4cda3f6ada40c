"""`python -m gpt_plugin.convert from-hf HF_DIR OUT_DIR`: a Hugging Face GPT-2 / BLOOM / MPT directory -> our params.

Writes (see `gpt_plugin.params_io` for the params format):
  OUT_DIR/params/             the params (orbax), `layers_i` layout (stacked `layers/` with --scan_layers)
  OUT_DIR/convert_info.json   GPTConfig fields, the source directory and its config.json (`hf_config`)
  OUT_DIR/model.gin           MODEL with the architecture read from config.json and the vocabulary of
                              OUT_DIR/tokenizer.json (copied from HF_DIR with tokenizer_config.json and
                              special_tokens_map.json); without a tokenizer.json ids pass through
Then: `--gin_file=OUT_DIR/model.gin --gin.INIT_PARAMS_FROM=\"OUT_DIR\"` fine-tunes with `gpt_plugin.train`, and
`--gin_file=OUT_DIR/model.gin --gin.CHECKPOINT_PATH=\"OUT_DIR\"` evaluates / samples with `gpt_plugin.eval` / `infer`.

config.json keys the model does not implement are refused, naming the key; training-only keys without a
counterpart (embedding dropout) are printed as notes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Tuple

from gpt_plugin import params_io
from gpt_plugin.convert import hf_bloom, hf_gpt2, hf_io, hf_mpt
from gpt_plugin.convert.hf_io import HFConversionError
from gpt_plugin.network import GPTConfig

FAMILIES = {m.ARCHITECTURE: m for m in (hf_gpt2, hf_bloom, hf_mpt)}
# Fields model.gin leaves to the run (compute dtype, kernels, memory options) or binds through a macro.
_RUN_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat_policy", "vocab_size", "dropout_rate")


def family_of_config(hf: Dict[str, Any], source: str):
  """The family module for a config.json (by `architectures`, else `model_type`)."""
  archs = hf.get("architectures") or []
  for arch in archs:
    if arch in FAMILIES:
      return FAMILIES[arch]
  by_type = {m.MODEL_TYPE: m for m in FAMILIES.values()}
  if not archs and hf.get("model_type") in by_type:
    return by_type[hf["model_type"]]
  raise HFConversionError(
    f"{source}: architectures={archs} (model_type={hf.get('model_type')!r}) is not supported; "
    f"supported: {', '.join(FAMILIES)}"
  )


def config_from_hf(hf: Dict[str, Any], source: str, scan_layers: bool = False) -> Tuple[Any, GPTConfig, List[str]]:
  """(family module, GPTConfig, notes) for a config.json; raises HFConversionError naming refused keys."""
  family = family_of_config(hf, source)
  fields, problems, notes = family.config_from_hf(hf)
  fields = dict(  # read alike in every family (config_to_hf's counterpart: hf_export.export_hf)
    block_type="sequential",
    layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
    init_std=float(hf.get("initializer_range", 0.02)),
    **fields,
  )
  if not hf.get("tie_word_embeddings", True):
    problems.append("tie_word_embeddings=false (gpt_plugin ties the output layer to the token embedding)")
  hf_io.refuse(problems, source)
  try:
    cfg = GPTConfig(**fields, scan_layers=scan_layers)
  except ValueError as e:
    raise HFConversionError(f"{source}: {e}") from e
  return family, cfg, notes


def import_hf(hf_dir: str, scan_layers: bool = False):
  """(GPTConfig, params, notes, config.json dict) of a Hugging Face model directory."""
  from gpt_plugin.convert import littlegpt  # pylint: disable=import-outside-toplevel

  hf = hf_io.read_config(hf_dir)
  source = os.path.join(hf_dir, hf_io.CONFIG_FILE)
  family, cfg, notes = config_from_hf(hf, source, scan_layers)
  tensors = hf_io.read_weights(hf_dir)
  base = {k: v for k, v in hf_io.split_lm_head(tensors, hf_dir).items() if not family.DROPPED.fullmatch(k)}
  params = hf_io.tensors_to_params(base, family.entries(cfg), f"the weights in {hf_dir}")
  hf_io.check_tied_head(tensors, base[family.EMBEDDING], hf_dir)
  if scan_layers:
    params = littlegpt.with_layers(params, littlegpt.layer_list(params), True)
  params_io.check_params_against(cfg, params, what=f"the weights in {hf_dir}", error=HFConversionError)
  return cfg, params, notes, hf


def _gin_value(value: Any) -> str:
  return repr(value)  # str / bool / None / numbers: Python literals are gin literals


def model_gin(cfg: GPTConfig, hf: Dict[str, Any], out_dir: str, hf_dir: str, tokenizer: bool) -> str:
  """The text of OUT_DIR/model.gin: every architecture field of `cfg` bound explicitly."""
  arch = (hf.get("architectures") or [hf.get("model_type")])[0]
  lines = [
    f"# Written by `python -m gpt_plugin.convert from-hf` from {os.path.abspath(hf_dir)} ({arch}).",
    f'# Fine-tune: --gin_file={out_dir}/model.gin --gin_file=runs/pretrain.gin --gin.INIT_PARAMS_FROM=\\"{out_dir}\\"',
    "from __gin__ import dynamic_registration",
    "from gpt_plugin import network",
    "from gpt_plugin.data import vocabularies",
    "",
    "include 'models/gpt_common.gin'",
    "",
    f"HF_SOURCE = {_gin_value(out_dir)}  # read by `convert to-hf` (original config.json, tokenizer files)",
    f"VOCAB_SIZE = {cfg.vocab_size}",
    f"DROPOUT_RATE = {cfg.dropout_rate}",
  ]
  eos = hf.get("eos_token_id")
  if isinstance(eos, int):
    lines.append(f"EOS_ID = {eos}")
  if tokenizer:
    lines += [
      "VOCABULARY = @hf_tokenizer/vocabularies.get_vocabulary()",
      f"hf_tokenizer/vocabularies.get_vocabulary.spec = {_gin_value(os.path.join(out_dir, 'tokenizer.json'))}",
    ]
  else:
    lines.append(f"# {hf_dir} has no tokenizer.json: token ids pass through (seqio.PassThroughVocabulary).")
  lines.append("")
  for field in dataclasses.fields(cfg):
    if field.name not in _RUN_FIELDS:
      lines.append(f"network.GPTConfig.{field.name} = {_gin_value(getattr(cfg, field.name))}")
  return "\n".join(lines) + "\n"


def run_from_hf(args) -> None:
  hf_dir, out_dir = os.path.abspath(args.hf_dir), os.path.abspath(args.out_dir)
  if not os.path.isdir(hf_dir):
    raise HFConversionError(f"{args.hf_dir}: no such directory")
  cfg, params, notes, hf = import_hf(hf_dir, scan_layers=bool(args.scan_layers))
  info = {
    "config": dataclasses.asdict(cfg),
    "source": hf_dir,
    "source_format": "huggingface",
    "hf_config": hf,
  }
  params_io.save_params(out_dir, params, info, msgpack=args.msgpack)
  copied = hf_io.copy_tokenizer(hf_dir, out_dir)
  with open(os.path.join(out_dir, "model.gin"), "w") as f:
    f.write(model_gin(cfg, hf, out_dir, hf_dir, tokenizer="tokenizer.json" in copied))
  arch = (hf.get("architectures") or [hf.get("model_type")])[0]
  print(
    f"{arch}: {cfg.num_layers} layers, emb_dim {cfg.emb_dim}, {cfg.num_heads} heads, vocab {cfg.vocab_size}, "
    f"{cfg.position_embedding} positions",
    flush=True,
  )
  for note in notes:
    print(f"note: {note}", flush=True)
  tok = "tokenizer.json" if "tokenizer.json" in copied else "no tokenizer.json: ids pass through"
  print(f"wrote {out_dir}/params, {out_dir}/model.gin ({tok})", flush=True)
