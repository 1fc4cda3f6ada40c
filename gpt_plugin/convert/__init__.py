"""Weights in and out: Little-GPT (PyTorch) checkpoints <-> gpt_plugin params, depth expansion, averaging.

CLI: `python -m gpt_plugin.convert {from-torch,to-torch,expand-depth,average} ...` (see README.md, "Weights in and out").
`.pth` files are read and written by `gpt_plugin.torch_archive` (restricted reader, never runs pickle; torch-free
writer); its API is re-exported here.

Modules:
  littlegpt        name / shape mapping Little-GPT state dict <-> our param tree (both layer layouts); 8-bit
                   (bitsandbytes blockwise) checkpoints are dequantized on import
  depth_expansion  Gopher-style warm start of a deeper model (new block i <- old block floor(i*old/new))
  averaging        mean of the last k checkpoints of a MODEL_DIR
Reading and writing params (OUT/params, MODEL_DIR and T5X checkpoints, .msgpack) and checking them against a model
live in `gpt_plugin.params_io` (shared with the inference runners); `load_params` / `save_params` are re-exported.
"""

import importlib

# Loaded on first use (PEP 562), so that `python -m gpt_plugin.convert --help` does not import jax.
_EXPORTS = {
  "params_io": ("gpt_plugin", "params_io"),  # `from gpt_plugin.convert import params_io` keeps working
  "average_checkpoints": ("gpt_plugin.convert.averaging", None),
  "average_trees": ("gpt_plugin.convert.averaging", None),
  "depth_map": ("gpt_plugin.convert.depth_expansion", None),
  "expand_depth": ("gpt_plugin.convert.depth_expansion", None),
  "inverse_map": ("gpt_plugin.convert.depth_expansion", None),
  **{
    n: ("gpt_plugin.convert.littlegpt", None)
    for n in (
      "LITTLEGPT_VOCAB_SIZE",
      "ConversionError",
      "check_params",
      "dequantize_8bit",
      "dequantize_blockwise",
      "from_torch",
      "infer_config",
      "to_torch",
    )
  },
  **{
    n: ("gpt_plugin.torch_archive", None)
    for n in ("TorchFileCorruptError", "TorchFileError", "UnsafePickleError", "load_pth", "read_state_dict", "save_pth")
  },
  "load_params": ("gpt_plugin.params_io", None),
  "save_params": ("gpt_plugin.params_io", None),
}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  value = getattr(importlib.import_module(module), attr or name)
  globals()[name] = value
  return value


__all__ = sorted(n for n in _EXPORTS if n != "params_io")  # params_io: importable, not part of `*`
