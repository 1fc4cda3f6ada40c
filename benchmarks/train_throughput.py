"""Training throughput of the real train step (issue 6): tokens/s, MFU, compile time, peak memory, and the ratio
to the plain Flax reference `naive_flax_gpt.py` run in the same process.

    python benchmarks/train_throughput.py --naive_path /work/shared/bench/naive_flax_gpt.py
    python benchmarks/train_throughput.py --configs gpt2_small --attention_impl flash_alibi --remat dots \\
        --naive_path ../shared/bench/naive_flax_gpt.py
    python benchmarks/train_throughput.py --smoke          # tiny sizes, CPU, end to end

Configurations (all ALiBi, parallel blocks, bf16 compute, fp32 params and AdamW state, vocab 50304):

| name        | layers | d    | heads | T    | default global batch |
|-------------|--------|------|-------|------|----------------------|
| gpt2_small  | 12     | 768  | 12    | 1024 | 16 x devices         |
| gpt_355m    | 24     | 1024 | 16    | 2048 | 8 x devices          |
| gpt_1_3b    | 24     | 2048 | 16    | 2048 | 4 x devices          |

The model is built through gin exactly like a training run (`models/gpt_architecture.gin` + the sizes above + the
switches), so any `network.GPTConfig` field can be changed with `--gin_bindings` / `--gin_file` (e.g.
`features/flash_alibi.gin`); `--attention_impl`, `--remat`, `--scan` are shorthands for the common ones.
The step is `gpt_plugin.training.train_step.make_train_step` (the trainer's, incl. clipping, AdamW, the
non-finite guard and microbatching) jitted with the trainer's shardings on a `(data, fsdp, tensor)` mesh over
all devices (`--mesh_shape`, `--partitioning data_parallel|fsdp`).

Reported per configuration:
  * tokens/s: global batch x T / median step time (after `--warmup` steps; every step synchronised);
  * MFU = tokens/s x F / (peak x devices) with F = 6N + 12 L d T FLOPs per token (N = all params incl. the tied
    embedding, attention counted in full: the PaLM / MosaicML convention of anchors.md section 0) and peak = 989
    TFLOP/s dense bf16 on H100/H200 (`--peak_tflops` overrides; 0 on CPU);
  * compile time of the train step (`jit(...).lower(...).compile()`), peak device memory
    (`device.memory_stats()['peak_bytes_in_use']`, max over local devices, measured before the reference runs);
  * ratio = our tokens/s / the naive reference's tokens/s for the same L, d, heads, T and per-device batch
    (the reference is imported from `--naive_path` and run in this process, after ours).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {
  "gpt2_small": dict(num_layers=12, emb_dim=768, num_heads=12, seq=1024, batch_per_device=16),
  "gpt_355m": dict(num_layers=24, emb_dim=1024, num_heads=16, seq=2048, batch_per_device=8),
  "gpt_1_3b": dict(num_layers=24, emb_dim=2048, num_heads=16, seq=2048, batch_per_device=4),
}
SMOKE = {"smoke_tiny": dict(num_layers=2, emb_dim=64, num_heads=4, seq=64, batch_per_device=2, vocab=512)}
VOCAB = 50304


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"any of {list(CONFIGS)}")
  p.add_argument("--smoke", action="store_true", help="tiny model, few steps (CPU end-to-end check)")
  p.add_argument(
    "--attention_impl", default=None, help="xla | cudnn | flash_alibi (default: cudnn on GPU, xla elsewhere)"
  )
  p.add_argument("--remat", default="none", help="GPTConfig.remat_policy (none, full, dots, ...)")
  p.add_argument("--scan", action="store_true", help="GPTConfig.scan_layers = True")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--gin_file", action="append", default=[], help="extra gin files (after the model sizes)")
  p.add_argument(
    "--gin_bindings", action="append", default=[], help="extra gin bindings, e.g. \"network.GPTConfig.mlp_dim = 4096\""
  )
  p.add_argument("--batch_per_device", type=int, default=None, help="override the per-config default")
  p.add_argument("--num_microbatches", type=int, default=1)
  p.add_argument("--mesh_shape", default=None, help="data,fsdp,tensor (default: all devices on data)")
  p.add_argument("--partitioning", default="data_parallel", choices=["data_parallel", "fsdp"])
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument(
    "--peak_tflops",
    type=float,
    default=None,
    help="peak dense bf16 TFLOP/s per device (default: 989 on H100/H200, from the device kind)",
  )
  p.add_argument("--naive_path", default=None, help="path of naive_flax_gpt.py (reference run in-process)")
  p.add_argument("--naive_attn", default=None, help="attention of the reference (cudnn on GPU, xla elsewhere)")
  p.add_argument("--json", default=None, help="also write the rows here (JSON lines)")
  return p.parse_args(argv)


def build_config(cfg: dict, args) -> "network.GPTConfig":
  """GPTConfig through gin: models/gpt_architecture.gin (no seqio needed) + sizes + switches + user gin."""
  import gin
  import jax
  from gpt_plugin import network
  from gpt_plugin import gin_utils

  attn = args.attention_impl or ("cudnn" if jax.default_backend() == "gpu" else "xla")
  vocab = cfg.get("vocab", VOCAB)
  bindings = [
    f"VOCAB_SIZE = {vocab}",
    f"ACTIVATION_DTYPE = '{args.dtype}'",
    f"network.GPTConfig.emb_dim = {cfg['emb_dim']}",
    f"network.GPTConfig.num_heads = {cfg['num_heads']}",
    f"network.GPTConfig.num_layers = {cfg['num_layers']}",
    "network.GPTConfig.position_embedding = 'alibi'",
    "network.GPTConfig.block_type = 'parallel'",
    f"network.GPTConfig.attention_impl = '{attn}'",
    f"network.GPTConfig.remat_policy = '{args.remat}'",
    f"network.GPTConfig.scan_layers = {bool(args.scan)}",
  ]
  if attn != "xla":
    bindings.append("network.GPTConfig.attention_dropout_rate = 0.0")
  gin_utils.parse_gin(
    ["models/gpt_architecture.gin"] + list(args.gin_file), bindings + list(args.gin_bindings), finalize=False
  )
  try:
    return gin.get_configurable(network.GPTConfig)()
  finally:
    gin.clear_config()


def run_ours(name: str, cfg: dict, args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gpt_plugin import models, network, partitioning
  from gpt_plugin.training import metrics, optimizer, train_step

  config = build_config(cfg, args)
  model = models.DecoderOnlyLM(network.GPTDecoder(config))  # no vocabulary: random token ids
  n_dev = jax.device_count()
  shape = tuple(int(x) for x in args.mesh_shape.split(",")) if args.mesh_shape else (-1, 1, 1)
  rules = (
    []
    if args.partitioning == "data_parallel"
    else [("embed", "fsdp"), ("vocab", "fsdp"), ("mlp", "fsdp"), ("joined_kv", "fsdp")]
  )
  mesh = partitioning.create_mesh(shape)
  part = partitioning.Partitioner(mesh, partitioning.logical_axis_rules(rules))
  per_dev = args.batch_per_device or cfg["batch_per_device"]
  batch, seq = per_dev * part.data_parallel_size, cfg["seq"]
  tx = optimizer.adamw(optimizer.constant_schedule(1e-4))
  shapes = {"decoder_input_tokens": (1, seq), "decoder_target_tokens": (1, seq)}
  key = jax.random.key(0)
  with part.context():
    av = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes), key)
  params_sh = part.logical_to_mesh(partitioning.params_logical_specs(av, av["params"]))

  def init(k):
    return train_step.create_train_state(model.get_initial_variables(k, shapes)["params"], tx, k)

  abstract = jax.eval_shape(init, key)
  state_sh = train_step.state_shardings(abstract, params_sh, tx, part.replicated)
  n_params = metrics.count_params(abstract.params)
  step_fn = train_step.make_train_step(
    model,
    tx,
    optimizer.constant_schedule(1e-4),
    num_microbatches=args.num_microbatches,
    params_shardings=params_sh,
    logical_axis_rules=part.rules,
  )
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, config.vocab_size, (batch, seq + 1)).astype(np.int32)
  host_batch = {
    "decoder_input_tokens": tokens[:, :-1],
    "decoder_target_tokens": tokens[:, 1:],
    "decoder_loss_weights": np.ones((batch, seq), np.int32),
  }
  with part.context():
    state = jax.jit(init, out_shardings=state_sh)(key)
    gbatch = {k: jax.device_put(v, part.batch_sharding(2)) for k, v in host_batch.items()}
    jitted = jax.jit(
      step_fn,
      in_shardings=(state_sh, part.batch_sharding(2)),
      out_shardings=(state_sh, part.replicated),
      donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    compiled = jitted.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.warmup + args.steps):
      t0 = time.perf_counter()
      state, m = compiled(state, gbatch)
      jax.block_until_ready(m["loss"])
      if i >= args.warmup:
        times.append(time.perf_counter() - t0)
  peak_mem = metrics.peak_memory_bytes()
  step_s = float(np.median(times))
  tok_s = batch * seq / step_s
  fpt = config.flops_per_token(seq)
  peak = (args.peak_tflops * 1e12) if args.peak_tflops else metrics.peak_flops_per_device()
  mfu = tok_s * fpt / (peak * n_dev) if peak else 0.0
  return {
    "impl": "gpt_plugin",
    "config": name,
    "device": str(jax.devices()[0].device_kind),
    "devices": n_dev,
    "params": n_params,
    "layers": config.num_layers,
    "d": config.emb_dim,
    "heads": config.num_heads,
    "seq": seq,
    "batch": batch,
    "attention_impl": config.attention_impl,
    "remat": config.remat_policy,
    "scan": config.scan_layers,
    "dtype": config.dtype,
    "num_microbatches": args.num_microbatches,
    "compile_s": compile_s,
    "step_s": step_s,
    "tokens_per_s": tok_s,
    "flops_per_token": fpt,
    "peak_flops_per_device": peak,
    "mfu": mfu,
    "peak_memory_bytes": peak_mem,
    "final_loss": float(m["loss"]),
  }


def run_naive(path: str, cfg: dict, ours: dict, args) -> dict:
  """Imports naive_flax_gpt.py by path and runs its `main()` in this process with the same sizes."""
  import jax

  spec = importlib.util.spec_from_file_location("naive_flax_gpt", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  attn = args.naive_attn or ("cudnn" if jax.default_backend() == "gpu" else "xla")
  argv = [
    path,
    "--layers",
    str(ours["layers"]),
    "--d",
    str(ours["d"]),
    "--heads",
    str(ours["heads"]),
    "--vocab",
    str(cfg.get("vocab", VOCAB)),
    "--seq",
    str(ours["seq"]),
    "--batch",
    str(ours["batch"] // ours["devices"]),
    "--attn",
    attn,
    "--steps",
    str(args.steps),
  ]
  buf = io.StringIO()
  old = sys.argv
  try:
    sys.argv = argv
    with contextlib.redirect_stdout(buf):
      mod.main()
  finally:
    sys.argv = old
  lines = [l for l in buf.getvalue().splitlines() if l.startswith("{")]
  return json.loads(lines[-1])


def fmt_row(r: dict) -> str:
  mem = f"{r['peak_memory_bytes'] / 2**30:.1f} GiB" if r.get("peak_memory_bytes") else "n/a"
  ratio = f"{r['ratio_vs_naive']:.2f}x" if r.get("ratio_vs_naive") else (r.get("naive_error") or "n/a")
  return (
    f"| {r['config']} | {r['device']} x{r['devices']} | {r['seq']} | {r['batch']} | {r['attention_impl']} / "
    f"{r['remat']} / {'scan' if r['scan'] else 'loop'} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f} % | "
    f"{r['compile_s']:.1f} s | {mem} | {ratio} |"
  )


def main(argv=None):
  args = parse_args(argv)
  if args.smoke:
    args.steps, args.warmup = min(args.steps, 3), 1
    configs = dict(SMOKE)
  else:
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
      raise SystemExit(f"unknown --configs {unknown}; choose from {list(CONFIGS)}")
    configs = {c: CONFIGS[c] for c in args.configs}
  rows = []
  for name, cfg in configs.items():
    try:
      r = run_ours(name, cfg, args)
    except Exception as e:  # pylint: disable=broad-except  (e.g. OOM: report the row, go on)
      print(json.dumps({"impl": "gpt_plugin", "config": name, "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)
      continue
    if args.naive_path:
      try:
        nv = run_naive(args.naive_path, cfg, r, args)
        r["naive_tokens_per_s"] = nv["tokens_per_s"] * r["devices"]  # the reference runs on one device
        r["naive_tokens_per_s_per_device"] = nv["tokens_per_s"]
        r["ratio_vs_naive"] = r["tokens_per_s"] / r["naive_tokens_per_s"]
        r["naive_attn"] = nv.get("attn")
      except Exception as e:  # pylint: disable=broad-except
        r["naive_error"] = f"reference failed: {type(e).__name__}: {str(e)[:200]}"
    print(json.dumps(r), flush=True)
    rows.append(r)
  print(
    "\n| config | device | T | global batch | attention / remat / layers | tokens/s | MFU | compile | "
    "peak mem | vs naive |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(fmt_row(r))
  print(
    "MFU convention: F = GPTConfig.flops_per_token(T) (matmul FLOPs of forward + backward, attention at its real "
    "width, no position table; the trainer uses the same count); peak "
    + (
      f"{rows[0]['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per device"
      if rows and rows[0]["peak_flops_per_device"]
      else "unknown for this device (MFU 0; pass --peak_tflops)"
    )
  )
  if args.json:
    with open(args.json, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
