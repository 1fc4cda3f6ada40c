#!/usr/bin/env python3
"""KV-cached decoding: prefill cost against the cache length, time to first token and tokens/s against
transformers (torch), and on a GPU the ratio of batch-1 speed to the memory-bandwidth bound.

  python benchmarks/decode_throughput.py            # GPT-2-124M shape; sections by device (see --sections)
  python benchmarks/decode_throughput.py --smoke    # tiny model, runs anywhere in seconds (CI / CPU)

Sections (each prints JSON lines, then a summary with the ratios):
  prefill      a 32-token prompt prefilled into a cache of 160 and of 2048 positions (ALiBi, 12 x 768):
               the prompt-bucketed prefill that `Generator` runs against a prefill over the whole cache (what
               `Generator` did before it prefilled only the prompt), both jitted into an allocated cache
               (donated), same process; the time to allocate the cache (zeros) is reported on its own.
  transformers time to first token (`generate` with 1 new token) and tokens/s (128 new tokens, greedy, no EOS)
               of `generate.Generator` against `transformers.GPT2LMHeadModel.generate` (torch, CPU) on the same
               GPT-2-124M architecture (sequential pre-LN blocks, learned positions, vocab 50257, random
               weights built from a `GPT2Config`, no download), at batch 1, 8 and 32; contenders interleaved;
               tokens/s also for our decoding with the whole-cache prefill of before (same run).
  throughput   tokens/s at batch 1 and 64 of the whole jitted program; on a GPU the fraction of the bandwidth
               bound (each decode step streams all weights once: bound = bandwidth / weight bytes).
Default: prefill + transformers on a CPU, prefill + throughput on a GPU (torch runs on the CPU only).
Times are medians over `--repeats` runs after one warm-up (compile) run.
"""

import argparse
import json
import os
import statistics
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


def median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def build(cfg: GPTConfig, dtype: str):
  model = models.DecoderOnlyLM(GPTDecoder(cfg))
  shapes = {"decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  return model, jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)  # serve in the compute dtype


class WholeCachePrefillGenerator(generate.Generator):
  """`Generator` as it was before prompt-only prefill: the prefill runs over the whole cache length."""

  def _prefill_length(self, longest, max_length):
    return max_length


def emit(row):
  print(json.dumps(row), flush=True)
  return row


# ------------------------------------------------------------------------------------------------ prefill
def prefill_section(args, dtype):
  """Times, per cache length: allocating the cache (zeros), the prompt-bucketed prefill and the whole-cache
  prefill into an allocated cache (donated, so written in place); interleaved, medians."""
  from gpt_plugin import decode_loop  # pylint: disable=import-outside-toplevel

  cfg = GPTConfig(
    vocab_size=args.vocab, emb_dim=args.d, num_heads=args.heads, num_layers=args.layers, dtype=dtype, param_dtype=dtype
  )
  model, params = build(cfg, dtype)
  decoder = decode_loop.CachedDecoder(model.module)
  prompt = args.prefill_prompt_len
  rows = []
  for batch in args.prefill_batches:
    inputs_np = np.zeros((batch, max(args.prefill_caches)), np.int32)
    inputs_np[:, 1 : prompt + 1] = np.random.RandomState(batch).randint(2, args.vocab, size=(batch, prompt))
    lengths = jnp.full((batch,), prompt, jnp.int32)
    runs = {}
    for cache_len in args.prefill_caches:
      inputs = jnp.asarray(inputs_np[:, :cache_len])
      bucket = decode_loop.prefill_bucket(prompt, cache_len)
      alloc = jax.jit(lambda params, n=cache_len, b=batch: decoder.init_cache(params, b, n))
      for name, length in (("bucketed", bucket), ("whole_cache", cache_len)):
        fill = jax.jit(
          lambda params, cache, inputs, n=length, lengths=lengths: decoder.prefill_prompt(
            params, cache, inputs, lengths, n
          ),
          donate_argnums=1,
        )
        runs[(cache_len, name)] = (alloc, fill, inputs, bucket)
    times = {key: ([], []) for key in runs}
    for rep in range(args.repeats + 1):  # the first round compiles
      for key, (alloc, fill, inputs, _) in runs.items():
        t0 = time.perf_counter()
        cache = jax.block_until_ready(alloc(params))
        t1 = time.perf_counter()
        jax.block_until_ready(fill(params, cache, inputs))
        if rep:
          times[key][0].append(t1 - t0)
          times[key][1].append(time.perf_counter() - t1)
    for cache_len in args.prefill_caches:
      ms = lambda key, i, times=times: round(1e3 * statistics.median(times[key][i]), 2)  # noqa: E731
      row = {
        "section": "prefill",
        "batch": batch,
        "prompt_len": prompt,
        "cache_len": cache_len,
        "bucket": runs[(cache_len, "bucketed")][3],
        "alloc_cache_ms": ms((cache_len, "bucketed"), 0),
        "bucketed_ms": ms((cache_len, "bucketed"), 1),
        "whole_cache_ms": ms((cache_len, "whole_cache"), 1),
      }
      row["whole_over_bucketed"] = round(row["whole_cache_ms"] / row["bucketed_ms"], 2)
      rows.append(emit(row))
  for batch in args.prefill_batches:
    r = [x for x in rows if x["batch"] == batch]
    if len(r) >= 2:
      lo, hi = min(r, key=lambda x: x["cache_len"]), max(r, key=lambda x: x["cache_len"])
      print(
        f"prefill batch {batch}, {prompt}-token prompt: bucketed {lo['bucketed_ms']} ms at cache {lo['cache_len']}, "
        f"{hi['bucketed_ms']} ms at cache {hi['cache_len']} (ratio {hi['bucketed_ms'] / lo['bucketed_ms']:.2f}, "
        f"goal <= 1.3); whole-cache prefill (before) {lo['whole_cache_ms']} / {hi['whole_cache_ms']} ms; "
        f"allocating the cache {lo['alloc_cache_ms']} / {hi['alloc_cache_ms']} ms",
        flush=True,
      )


# ------------------------------------------------------------------------------------------- transformers
def transformers_section(args):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  transformers.logging.set_verbosity_error()
  cfg = GPTConfig(
    vocab_size=args.hf_vocab,
    emb_dim=args.d,
    num_heads=args.heads,
    num_layers=args.layers,
    block_type="sequential",
    position_embedding="learned",
    max_position_embeddings=1024,
    layer_norm_epsilon=1e-5,
  )
  model, params = build(cfg, "float32")
  gen = generate.Generator(model, params)
  gen_whole = WholeCachePrefillGenerator(model, params)
  torch.manual_seed(0)
  hf_cfg = transformers.GPT2Config(
    vocab_size=args.hf_vocab, n_positions=1024, n_embd=args.d, n_layer=args.layers, n_head=args.heads
  )
  hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
  n_ours = sum(x.size for x in jax.tree.leaves(params))
  n_hf = sum(p.numel() for p in hf.parameters())
  prompt, new = args.prompt_len, args.new_tokens
  rows = []
  for batch in args.hf_batches:
    prompts = np.random.RandomState(batch).randint(2, args.hf_vocab - 1, size=(batch, prompt))
    ids = torch.as_tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)

    def ours(n, prompts=prompts, gen=gen):
      return lambda: gen.generate(prompts.tolist(), max_new_tokens=n, eos_id=-1, return_output=True)

    def theirs(n, ids=ids, mask=mask):
      def run():
        with torch.inference_mode():
          return hf.generate(
            ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
          )

      return run

    contenders = {
      "ttft_ours": ours(1),
      "ttft_hf": theirs(1),
      "decode_ours": ours(new),
      "decode_hf": theirs(new),
      "decode_ours_whole_prefill": ours(new, gen=gen_whole),
    }
    for fn in contenders.values():
      fn()  # compile / warm-up
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):  # interleaved, so load from other jobs hits both alike
      for k, fn in contenders.items():
        t0 = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
      "section": "transformers",
      "batch": batch,
      "prompt_len": prompt,
      "new_tokens": new,
      "ttft_ours_ms": round(1e3 * med["ttft_ours"], 1),
      "ttft_hf_ms": round(1e3 * med["ttft_hf"], 1),
      "tok_s_ours": round(batch * new / med["decode_ours"], 1),
      "tok_s_hf": round(batch * new / med["decode_hf"], 1),
      "tok_s_ours_whole_prefill": round(batch * new / med["decode_ours_whole_prefill"], 1),
      "params_M_ours": round(n_ours / 1e6, 2),
      "params_M_hf": round(n_hf / 1e6, 2),
    }
    row["ttft_speedup"] = round(med["ttft_hf"] / med["ttft_ours"], 2)
    row["tok_s_speedup"] = round(med["decode_hf"] / med["decode_ours"], 2)
    rows.append(emit(row))
  for r in rows:
    print(
      f"batch {r['batch']}: time to first token {r['ttft_ours_ms']} ms vs transformers {r['ttft_hf_ms']} ms "
      f"({r['ttft_speedup']}x); {r['tok_s_ours']} vs {r['tok_s_hf']} tokens/s ({r['tok_s_speedup']}x); "
      f"{r['tok_s_ours_whole_prefill']} tokens/s with the whole-cache prefill of before",
      flush=True,
    )


# --------------------------------------------------------------------------------------------- throughput
def throughput_section(args, dtype, device):
  on_gpu = device.platform == "gpu"
  extra = {}
  for f in filter(None, args.features.split(",")):
    k, _, v = f.partition("=")
    extra[k] = v if v else True
  cfg = GPTConfig(
    vocab_size=args.vocab, emb_dim=args.d, num_heads=args.heads, num_layers=args.layers, dtype=dtype, **extra
  )
  model, params = build(cfg, dtype)
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  gen = generate.Generator(model, params)
  total = args.prompt_len + args.new_tokens
  rows = []
  for bs in args.batch_sizes:
    prompts = np.random.RandomState(bs).randint(2, args.vocab, size=(bs, args.prompt_len)).tolist()
    run = lambda prompts=prompts: gen.generate(prompts, max_length=total, eos_id=-1, return_output=True)  # noqa: E731
    t0 = time.perf_counter()
    run()  # compile + warm-up
    compile_s = time.perf_counter() - t0
    best = median_time(run, args.repeats)
    row = {
      "section": "throughput",
      "batch": bs,
      "new_tokens": args.new_tokens,
      "prompt_len": args.prompt_len,
      "seconds": round(best, 4),
      "tokens_per_s": round(bs * args.new_tokens / best, 1),
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
    rows.append(emit(row))
  if not on_gpu:
    print(f"GPU numbers: not measured (this run used {device.platform}: {device.device_kind})")
    return
  b1 = next((r for r in rows if r["batch"] == 1), None)
  b64 = next((r for r in rows if r["batch"] == 64), None)
  if b1 and "fraction_of_bound" in b1:
    print(
      f"batch 1: {b1['tokens_per_s']} tok/s = {100 * b1['fraction_of_bound']:.1f}% of the bandwidth bound (goal >= 40%)"
    )
  if b64:
    print(f"batch 64: {b64['tokens_per_s']} tok/s (goal >= 150000)")


def ints(text):
  return [int(x) for x in text.split(",") if x]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny model and lengths (CPU-friendly, seconds)")
  p.add_argument("--sections", default=None, help="comma list of prefill,transformers,throughput")
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d", type=int, default=768)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--vocab", type=int, default=50304, help="vocabulary of the prefill/throughput model")
  p.add_argument("--hf_vocab", type=int, default=50257, help="vocabulary of the GPT-2 model of both contenders")
  p.add_argument("--dtype", default=None, help="activation/param dtype (default bfloat16 on GPU, float32 on CPU)")
  p.add_argument("--prefill_prompt_len", type=int, default=32)
  p.add_argument("--prefill_caches", type=ints, default=[160, 2048])
  p.add_argument("--prefill_batches", type=ints, default=[1])
  p.add_argument("--hf_batches", type=ints, default=[1, 8, 32])
  p.add_argument("--batch_sizes", type=ints, default=[1, 64], help="throughput section")
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument(
    "--features",
    default="",
    help="throughput section: GPTConfig booleans/choices, e.g. use_static_sgu,head_qk_trick,block_type=sequential",
  )
  args = p.parse_args()
  device = jax.devices()[0]
  if args.smoke:
    args.layers, args.d, args.heads, args.vocab, args.hf_vocab = 2, 64, 4, 512, 512
    args.prompt_len, args.new_tokens, args.repeats = 8, 24, 2
    args.prefill_prompt_len, args.prefill_caches, args.prefill_batches = 8, [32, 256], [1]
    args.hf_batches, args.batch_sizes = [1, 4], [1, 4]
  sections = args.sections or ("prefill,throughput" if device.platform == "gpu" else "prefill,transformers")
  if args.smoke and args.sections is None:
    sections = "prefill,transformers,throughput"
  dtype = args.dtype or ("bfloat16" if device.platform == "gpu" else "float32")
  print(f"device: {device.platform} {device.device_kind}; sections: {sections}", flush=True)
  for section in sections.split(","):
    if section == "prefill":
      prefill_section(args, dtype)
    elif section == "transformers":
      transformers_section(args)
    elif section == "throughput":
      throughput_section(args, dtype, device)
    else:
      p.error(f"--sections: unknown section {section!r} (prefill, transformers, throughput)")


if __name__ == "__main__":
  main()
