r"""`python -m gpt_plugin.convert <command> ...`: weights in and out.

  from-torch    Little-GPT `.pth` / `.pth.tar` (state dict, "complete state" or 8-bit) -> OUT/params (orbax)
  to-torch      params (OUT dir, MODEL_DIR checkpoint, .msgpack) -> Little-GPT state dict `.pth.tar`
  expand-depth  params of an N-layer model -> params of an M-layer model (Gopher warm start)
  average       mean params of the last k checkpoints of a MODEL_DIR -> OUT/params
  from-hf       Hugging Face GPT-2 / BLOOM / MPT directory -> OUT/params + OUT/model.gin (+ tokenizer)
  to-hf         params -> a directory transformers' from_pretrained loads (GPT-2 / BLOOM / MPT)

The model comes from gin like the runners (`--gin_file=models/littlegpt_127m.gin`, `--gin_bindings`,
`--gin.NAME=VALUE`); from-torch can also infer it from the checkpoint, and the other commands read it from
OUT/convert_info.json when there is no --gin_file. User errors (bad gin, a checkpoint / model mismatch, a missing
file) print one `ERROR:` line and exit 2; `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional

import numpy as np

DTYPES = ("float32", "float16", "bfloat16")


def _config_from_gin(args):
  from gpt_plugin import gin_utils  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel

  gin_utils.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths, finalize=False)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  return model.module.config


def _config(args, info: Optional[dict] = None, required: bool = True):
  from gpt_plugin.network import GPTConfig  # pylint: disable=import-outside-toplevel

  if args.gin_file:
    cfg = _config_from_gin(args)
  elif info and "config" in info:
    cfg = GPTConfig(**info["config"])
  elif required:
    raise SystemExit(
      "error: no model: give --gin_file (e.g. models/littlegpt_127m.gin) or an input with convert_info.json"
    )
  else:
    return None
  if getattr(args, "scan_layers", None) is not None:
    cfg = dataclasses.replace(cfg, scan_layers=args.scan_layers)
  return cfg


def _info(cfg, **extra) -> dict:
  return {"config": dataclasses.asdict(cfg), **extra}


def cmd_from_torch(args) -> None:
  from gpt_plugin import torch_archive  # pylint: disable=import-outside-toplevel
  from gpt_plugin import params_io  # pylint: disable=import-outside-toplevel
  from gpt_plugin.convert import littlegpt  # pylint: disable=import-outside-toplevel

  key = None if args.state_dict_key == "none" else args.state_dict_key
  sd = torch_archive.read_state_dict(args.input, key=key)
  sd = littlegpt.strip_wrappers(sd)
  sd, report = littlegpt.dequantize_8bit(sd)  # Little-GPT 8-bit (FrozenBNBLinear) checkpoints
  quantized = littlegpt.quantization_info(report)
  if quantized:
    print(f"dequantized {quantized['num_params']} 8-bit weights (blocksizes {quantized['blocksizes']})", flush=True)
  if args.gin_file:
    cfg = _config(args)
  else:
    cfg = littlegpt.infer_config(sd)
    if args.scan_layers is not None:
      cfg = dataclasses.replace(cfg, scan_layers=args.scan_layers)
    print(f"inferred model: {cfg}", flush=True)
  vocab = int(np.shape(sd["wte.weight"])[0])
  params = littlegpt.from_torch(sd, cfg, quantization=report)
  del sd  # the params are copies: free the file's tensors before orbax writes
  info = _info(
    cfg,
    source=os.path.abspath(args.input),
    source_format="littlegpt-torch",
    source_vocab_size=vocab,
    note=f"embedding rows {vocab}..{cfg.vocab_size - 1} are zero padding",
    source_8bit=bool(quantized),
    **({"source_quantization": quantized} if quantized else {}),
  )
  params_io.save_params(args.output, params, info, msgpack=args.msgpack)
  print(
    f"wrote {args.output}/params ({cfg.num_params():,} params, {cfg.num_layers} layers, "
    f"vocab {vocab} -> {cfg.vocab_size})",
    flush=True,
  )


def cmd_to_torch(args) -> None:
  from gpt_plugin import torch_archive  # pylint: disable=import-outside-toplevel
  from gpt_plugin import params_io  # pylint: disable=import-outside-toplevel
  from gpt_plugin.convert import littlegpt  # pylint: disable=import-outside-toplevel

  params, where = params_io.load_params(args.input, step=args.step)
  info = params_io.read_info(args.input) or params_io.read_info(where)
  cfg = _config(args, info)
  cfg = dataclasses.replace(cfg, scan_layers=littlegpt.is_scanned(params))
  vocab = args.vocab_size
  if vocab is None:
    vocab = (info or {}).get("source_vocab_size", littlegpt.LITTLEGPT_VOCAB_SIZE)
  import ml_dtypes  # pylint: disable=import-outside-toplevel

  dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[args.dtype]
  sd = littlegpt.to_torch(
    params,
    cfg,
    vocab_size=vocab or None,
    buffers=not args.no_buffers,
    num_ctx=args.num_ctx,
    lm_head=not args.no_lm_head,
    dtype=dtype,
  )
  obj = {"state_dict": sd} if args.wrap_state_dict else sd
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  torch_archive.save_pth(obj, args.output)
  print(
    f"wrote {args.output} ({len(sd)} entries, vocab {sd['wte.weight'].shape[0]}, {args.dtype}) from {where}", flush=True
  )


def cmd_expand_depth(args) -> None:
  from gpt_plugin import params_io  # pylint: disable=import-outside-toplevel
  from gpt_plugin.convert import depth_expansion, littlegpt  # pylint: disable=import-outside-toplevel

  params, where = params_io.load_params(args.input, step=args.step)
  info = params_io.read_info(args.input) or params_io.read_info(where)
  old = len(littlegpt.layer_list(params))
  target = _config(args, info, required=False)
  new_layers = args.num_layers or (target.num_layers if target is not None else None)
  if not new_layers:
    raise SystemExit("error: give --num_layers (or a target --gin_file)")
  if target is not None:
    target = dataclasses.replace(target, num_layers=new_layers)
  scanned = (
    target.scan_layers
    if (target is not None and (args.gin_file or args.scan_layers is not None))
    else (littlegpt.is_scanned(params) if args.scan_layers is None else args.scan_layers)
  )
  out = depth_expansion.expand_depth(params, new_layers, scan_layers=scanned)
  if target is not None:
    target = dataclasses.replace(target, scan_layers=scanned)
    littlegpt.check_params(out, target, "expanded params")
  table = depth_expansion.inverse_map(old, new_layers)
  extra = {k: v for k, v in (info or {}).items() if k not in ("config", "depth_expansion")}
  new_info = _info(target, **extra) if target is not None else dict(extra)
  new_info["depth_expansion"] = {
    "source": where,
    "old_layers": old,
    "new_layers": new_layers,
    "old_to_new": {str(k): v for k, v in table.items()},
  }
  params_io.save_params(args.output, out, new_info, msgpack=args.msgpack)
  print(
    f"wrote {args.output}/params: {old} -> {new_layers} layers; old block -> new blocks: "
    + ", ".join(f"{k}->{v}" for k, v in table.items()),
    flush=True,
  )


def cmd_average(args) -> None:
  from gpt_plugin import params_io  # pylint: disable=import-outside-toplevel
  from gpt_plugin.convert import averaging  # pylint: disable=import-outside-toplevel

  params, steps = averaging.average_checkpoints(args.model_dir, last=args.last, steps=args.steps)
  cfg = _config(args, None, required=False)
  if cfg is not None:
    from gpt_plugin.convert import littlegpt  # pylint: disable=import-outside-toplevel

    cfg = dataclasses.replace(cfg, scan_layers=littlegpt.is_scanned(params))
    littlegpt.check_params(params, cfg, "averaged params")
  info = _info(cfg) if cfg is not None else {}
  info["averaged"] = {"model_dir": os.path.abspath(args.model_dir), "steps": steps}
  params_io.save_params(args.output, params, info, msgpack=args.msgpack)
  print(f"wrote {args.output}/params: mean of steps {steps} of {args.model_dir}", flush=True)


def cmd_from_hf(args) -> None:
  from gpt_plugin.convert import hf_import  # pylint: disable=import-outside-toplevel

  hf_import.run_from_hf(args)


def cmd_to_hf(args) -> None:
  from gpt_plugin.convert import hf_export  # pylint: disable=import-outside-toplevel

  hf_export.run_to_hf(args, _config)


def _add_gin(p, scan=True):
  p.add_argument("--gin_file", action="append", default=[], help="model gin file(s), e.g. models/littlegpt_127m.gin")
  p.add_argument("--gin_bindings", action="append", default=[], help="gin binding(s) applied after the files")
  p.add_argument("--gin_search_paths", type=lambda s: s.split(","), default=["."])
  p.add_argument("--verbose", action="store_true", help="full traceback on errors (or GPT_PLUGIN_VERBOSE=1)")
  if scan:
    p.add_argument(
      "--scan_layers",
      dest="scan_layers",
      action="store_true",
      default=None,
      help="write the stacked `layers/` layout (nn.scan models)",
    )
    p.add_argument(
      "--noscan_layers",
      "--no_scan_layers",
      dest="scan_layers",
      action="store_false",
      help="write the per-layer `layers_i/` layout",
    )


def build_parser() -> argparse.ArgumentParser:
  from gpt_plugin import cli  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(
    prog="python -m gpt_plugin.convert",
    description=__doc__,
    epilog="Each command's gin flags: python -m gpt_plugin.convert COMMAND --help\n\n" + cli.gin_folders_text(),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  for add_command in (
    _add_from_torch_parser,
    _add_to_torch_parser,
    _add_expand_depth_parser,
    _add_average_parser,
    _add_from_hf_parser,
    _add_to_hf_parser,
  ):
    add_command(sub)
  return parser


def _add_from_torch_parser(sub) -> None:
  p = sub.add_parser("from-torch", help="Little-GPT .pth(.tar) -> orbax params")
  p.add_argument("--input", required=True, help="torch.save file: a state dict or a dict with 'state_dict'")
  p.add_argument("--output", required=True, help="output directory (OUT/params, OUT/convert_info.json)")
  p.add_argument(
    "--state_dict_key",
    default="auto",
    help="entry holding the state dict ('auto': the file itself or its 'state_dict'; 'none': the file)",
  )
  p.add_argument("--msgpack", action="store_true", help="also write OUT/params.msgpack")
  _add_gin(p)
  p.set_defaults(fn=cmd_from_torch)


def _add_to_torch_parser(sub) -> None:
  p = sub.add_parser("to-torch", help="params -> Little-GPT state dict .pth.tar")
  p.add_argument("--input", required=True, help="OUT dir, params dir, MODEL_DIR or .msgpack")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of a MODEL_DIR (default: latest)")
  p.add_argument("--output", required=True, help="file to write, e.g. model_only.pth.tar")
  p.add_argument(
    "--vocab_size",
    type=int,
    default=None,
    help="embedding rows to keep (default: the imported file's, else 50257; 0 = all)",
  )
  p.add_argument("--num_ctx", type=int, default=512, help="size of the attn.mask buffers (Little-GPT's num_ctx)")
  p.add_argument("--no_buffers", action="store_true", help="omit the attn.slopes / attn.mask buffers")
  p.add_argument("--no_lm_head", action="store_true", help="omit the tied lm_head.weight")
  p.add_argument("--dtype", choices=DTYPES, default="float32")
  p.add_argument(
    "--wrap_state_dict", action="store_true", help="write {'state_dict': ...} (what Little-GPT's 1B loader expects)"
  )
  _add_gin(p, scan=False)
  p.set_defaults(fn=cmd_to_torch)


def _add_expand_depth_parser(sub) -> None:
  p = sub.add_parser("expand-depth", help="warm start a deeper model (new block i <- old floor(i*old/new))")
  p.add_argument("--input", required=True, help="OUT dir, params dir, MODEL_DIR or .msgpack")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--output", required=True)
  p.add_argument("--num_layers", type=int, default=None, help="new depth (default: the target gin's)")
  p.add_argument("--msgpack", action="store_true")
  _add_gin(p)
  p.set_defaults(fn=cmd_expand_depth)


def _add_average_parser(sub) -> None:
  p = sub.add_parser("average", help="mean params of the last k checkpoints of a MODEL_DIR")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--last", type=int, default=4, help="number of most recent checkpoints to average")
  p.add_argument(
    "--steps",
    type=lambda s: [int(x) for x in s.split(",")],
    default=None,
    help="comma-separated steps instead of --last",
  )
  p.add_argument("--output", required=True)
  p.add_argument("--msgpack", action="store_true")
  _add_gin(p, scan=False)
  p.set_defaults(fn=cmd_average)


def _add_from_hf_parser(sub) -> None:
  p = sub.add_parser("from-hf", help="Hugging Face GPT-2 / BLOOM / MPT directory -> params + model.gin")
  p.add_argument("hf_dir", help="directory with config.json, model.safetensors or pytorch_model.bin (or shards)")
  p.add_argument("out_dir", help="output directory (OUT/params, OUT/model.gin, OUT/convert_info.json, tokenizer)")
  p.add_argument("--scan_layers", action="store_true", help="write the stacked `layers/` layout (nn.scan models)")
  p.add_argument("--msgpack", action="store_true", help="also write OUT/params.msgpack")
  p.set_defaults(fn=cmd_from_hf)


def _add_to_hf_parser(sub) -> None:
  p = sub.add_parser("to-hf", help="params -> Hugging Face directory (GPT2LMHeadModel / BloomForCausalLM / MPT)")
  p.add_argument("checkpoint", help="from-hf OUT dir, MODEL_DIR, checkpoint or .msgpack")
  p.add_argument("out_dir", help="directory to write (config.json, model.safetensors, tokenizer files)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of a MODEL_DIR (default: latest)")
  p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
  p.add_argument(
    "--tokenizer", default=None, help="tokenizer.json or a directory with tokenizer files (default: the imported one)"
  )
  _add_gin(p, scan=False)
  p.set_defaults(fn=cmd_to_hf)


def _main(argv) -> int:
  from gpt_plugin.gin_utils import rewrite_gin_args  # pylint: disable=import-outside-toplevel

  args = build_parser().parse_args(rewrite_gin_args(argv))
  args.fn(args)
  return 0


def main(argv=None) -> int:
  """Exit status: 0, or 2 after one `ERROR:` line for a user error (gpt_plugin.cli)."""
  from gpt_plugin import cli  # pylint: disable=import-outside-toplevel

  return cli.run_argparse(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
