#!/usr/bin/env python3
"""KV-cached decoding throughput (tokens/s) at batch 1 and batch 64, and on a GPU the ratio of batch-1 speed
to the memory-bandwidth bound (every decode step reads all weights once: bound = bandwidth / weight bytes).

  python benchmarks/decode_throughput.py                 # GPT-2-small shape (12 x 768, vocab 50304), bf16
  python benchmarks/decode_throughput.py --smoke         # tiny model, runs anywhere in seconds (CI / CPU)

Goals (GPT-2-small shape on one H100/H200): batch 1 >= 40 % of the bandwidth bound, batch 64 >= 150k tokens/s.
The timed region is the whole jitted program (prefill of a short prompt + the decoding while_loop); greedy, no
EOS, so every row decodes exactly `--new_tokens` tokens. One JSON line per batch size, then a summary.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gpt_plugin import generate, models  # noqa: E402
from gpt_plugin.network import GPTConfig, GPTDecoder  # noqa: E402

# Peak HBM bandwidth, bytes/s (vendor datasheets), by substring of jax's device_kind.
GPU_BANDWIDTH = [
  ("H200", 4.8e12),
  ("H100 PCIe", 2.0e12),
  ("H100 NVL", 3.9e12),
  ("H100", 3.35e12),
  ("A100-SXM4-80GB", 2.039e12),
  ("A100 80GB", 1.935e12),
  ("A100", 1.555e12),
  ("L4", 0.3e12),
  ("A10", 0.6e12),
]


def bandwidth_of(kind: str):
  for name, bw in GPU_BANDWIDTH:
    if name.lower() in kind.lower():
      return bw
  return None


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny model and lengths (CPU-friendly)")
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d", type=int, default=768)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--vocab", type=int, default=50304)
  p.add_argument("--dtype", default=None, help="activation/param dtype (default bfloat16 on GPU, float32 on CPU)")
  p.add_argument("--batch_sizes", default="1,64")
  p.add_argument("--prompt_len", type=int, default=16)
  p.add_argument("--new_tokens", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument(
    "--features",
    default="",
    help="comma list of GPTConfig booleans/choices, e.g. use_static_sgu,head_qk_trick,block_type=sequential",
  )
  args = p.parse_args()
  if args.smoke:
    args.layers, args.d, args.heads, args.vocab = 2, 64, 4, 512
    args.prompt_len, args.new_tokens, args.repeats = 8, 24, 2
  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
  extra = {}
  for f in filter(None, args.features.split(",")):
    k, _, v = f.partition("=")
    extra[k] = v if v else True
  cfg = GPTConfig(
    vocab_size=args.vocab, emb_dim=args.d, num_heads=args.heads, num_layers=args.layers, dtype=dtype, **extra
  )
  model = models.DecoderOnlyLM(GPTDecoder(cfg))
  shapes = {"decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)  # serve in the compute dtype
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  gen = generate.Generator(model, params)
  total = args.prompt_len + args.new_tokens
  rows = []
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    prompts = np.random.RandomState(bs).randint(2, args.vocab, size=(bs, args.prompt_len)).tolist()
    run = lambda: gen.generate(prompts, max_length=total, eos_id=-1, return_output=True)  # noqa: E731
    t0 = time.perf_counter()
    run()  # compile + warm-up
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      out = run()
      times.append(time.perf_counter() - t0)
    best = min(times)
    assert out.sequences.shape == (bs, 1, total)
    tok_s = bs * args.new_tokens / best
    row = {
      "batch": bs,
      "new_tokens": args.new_tokens,
      "prompt_len": args.prompt_len,
      "seconds": round(best, 4),
      "tokens_per_s": round(tok_s, 1),
      "ms_per_step": round(1e3 * best / args.new_tokens, 3),
      "compile_s": round(compile_s, 1),
      "device": device.device_kind,
      "dtype": dtype,
      "params_M": round(sum(x.size for x in jax.tree.leaves(params)) / 1e6, 2),
      "weight_MB": round(weight_bytes / 1e6, 1),
    }
    bw = bandwidth_of(device.device_kind) if on_gpu else None
    if bw:
      bound = bw / weight_bytes  # steps/s if each step only streams the weights once
      row["bandwidth_bound_steps_per_s"] = round(bound, 1)
      row["fraction_of_bound"] = round((args.new_tokens / best) / bound, 3)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if not on_gpu:
    print(
      "GPU numbers: not measured (this run used "
      f"{device.platform}: {device.device_kind}; run without --smoke on an H100/H200 for the goals)"
    )
  else:
    b1 = next((r for r in rows if r["batch"] == 1), None)
    b64 = next((r for r in rows if r["batch"] == 64), None)
    if b1 and "fraction_of_bound" in b1:
      print(
        f"batch 1: {b1['tokens_per_s']} tok/s = {100 * b1['fraction_of_bound']:.1f}% of the bandwidth bound "
        f"(goal >= 40%)"
      )
    if b64:
      print(f"batch 64: {b64['tokens_per_s']} tok/s (goal >= 150000)")


if __name__ == "__main__":
  main()
