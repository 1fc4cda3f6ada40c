"""Causal ALiBi attention benchmark: forward and forward+backward times.

Implementations (``--impls``):
  xla            jax.nn.dot_product_attention(implementation='xla') with the
                 ALiBi bias materialised as a [1, H, T, T] array.
  cudnn          same, implementation='cudnn' (bias read + dBias in bwd).
  cudnn_nobias   cuDNN causal attention *without* ALiBi: the speed target
                 (flash_alibi should be <= 1.25x of it at T=8192).
  flash_alibi    gpt_plugin.kernels.flash_alibi.flash_alibi_attention
                 (Pallas Triton on GPU; interpret mode on CPU).
  pallas_mha     jax.experimental.pallas.ops.gpu.attention.mha, causal, no
                 bias: same kernel family as flash_alibi, shows the ALiBi
                 overhead (GPU only).
  reference      flash_alibi_reference (blockwise jnp, custom VJP).

Errors are max|out - ref| / max|ref| against a float32 XLA reference
(materialised bias, HIGHEST precision, computed one head at a time); gradient
errors (dq, dk, dv, worst of the three) are computed for T <= --grad-check-max-t.

  python benchmarks/attention.py --smoke           # tiny, CPU, end to end
  python benchmarks/attention.py                   # GPU: T=1k..16k, D=64,128
  python benchmarks/attention.py --seq-lens 8192 --head-dims 64 --sweep
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpt_plugin.kernels import flash_alibi as fa  # noqa: E402

ALL_IMPLS = ("xla", "cudnn", "cudnn_nobias", "flash_alibi", "pallas_mha", "reference")
GPU_ONLY = ("cudnn", "cudnn_nobias", "pallas_mha")


def alibi_bias(slopes, t, dtype):
  pos = jnp.arange(t, dtype=jnp.float32)
  bias = slopes[:, None, None] * (pos[None, None, :] - pos[None, :, None])
  return bias[None].astype(dtype)  # [1, H, T, T]


def reference_f32(q, k, v, slopes):
  """Causal ALiBi attention, fp32, materialised bias, one head at a time."""
  b, t, h, d = q.shape
  scale = 1.0 / math.sqrt(d)
  pos = jnp.arange(t)
  causal = pos[None, :] <= pos[:, None]

  def one_head(args):
    qh, kh, vh, s = args  # [B, T, D]
    logits = jnp.einsum("bqd,bkd->bqk", qh, kh, precision=jax.lax.Precision.HIGHEST) * scale
    logits = logits + s * (pos[None, :] - pos[:, None]).astype(jnp.float32)
    logits = jnp.where(causal, logits, -jnp.inf)
    p = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bqk,bkd->bqd", p, vh, precision=jax.lax.Precision.HIGHEST)

  to_h = lambda x: jnp.moveaxis(x.astype(jnp.float32), 2, 0)  # [H, B, T, D]
  out = jax.lax.map(one_head, (to_h(q), to_h(k), to_h(v), slopes))
  return jnp.moveaxis(out, 0, 2)


def make_impl(name, slopes, t, dtype, args):
  if name == "xla":
    bias = alibi_bias(slopes, t, dtype)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="xla")
  if name == "cudnn":
    bias = alibi_bias(slopes, t, dtype)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="cudnn")
  if name == "cudnn_nobias":
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  if name == "flash_alibi":
    kw = dict(
      block_q=args.block_q,
      block_k=args.block_k,
      bwd_block_q=args.bwd_block_q,
      bwd_block_k=args.bwd_block_k,
      num_warps=args.num_warps,
      num_stages=args.num_stages,
    )
    return lambda q, k, v: fa.flash_alibi_attention(q, k, v, slopes=slopes, causal=True, **kw)
  if name == "pallas_mha":
    from jax.experimental.pallas.ops.gpu import attention as pmha

    d = args._head_dim
    return lambda q, k, v: pmha.mha(q, k, v, None, sm_scale=1.0 / math.sqrt(d), causal=True)
  if name == "reference":
    return lambda q, k, v: fa.flash_alibi_reference(q, k, v, slopes=slopes, causal=True)
  raise ValueError(name)


def timed(fn, inputs, warmup, repeats):
  for _ in range(warmup):
    jax.block_until_ready(fn(*inputs))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*inputs))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def max_rel(a, b):
  a = np.asarray(jnp.asarray(a, jnp.float32))
  b = np.asarray(jnp.asarray(b, jnp.float32))
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def causal_flops(b, h, t, d):
  """Useful FLOPs: fwd 2 matmuls over the causal half; bwd = 2.5x fwd."""
  fwd = 4.0 * b * h * t * t * d / 2
  return fwd, 3.5 * fwd


def run_config(args, b, h, t, d, impls):
  args._head_dim = d
  dtype = jnp.dtype(args.dtype)
  key = jax.random.PRNGKey(t * 131 + d)
  kq, kk, kv, kw = jax.random.split(key, 4)
  q, k, v, w = (jax.random.normal(x, (b, t, h, d), jnp.float32) for x in (kq, kk, kv, kw))
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  slopes = jnp.asarray(fa.alibi_slopes(h))

  ref_out = jax.jit(reference_f32)(q, k, v, slopes)
  ref_grads = None
  if t <= args.grad_check_max_t:
    _, vjp = jax.vjp(
      lambda *a: reference_f32(*a, slopes), q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)
    )
    ref_grads = jax.jit(vjp)(w)
  fwd_flops, total_flops = causal_flops(b, h, t, d)

  rows = []
  for name in impls:
    row = dict(impl=name, B=b, H=h, T=t, D=d, dtype=str(dtype.name))
    try:
      attn = make_impl(name, slopes, t, dtype, args)
      fwd = jax.jit(attn)

      def loss(q, k, v):
        return jnp.sum(attn(q, k, v).astype(jnp.float32) * w)

      fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      out = fwd(q, k, v)
      row["err_out"] = max_rel(out, ref_out)
      if ref_grads is not None:
        _, grads = fwd_bwd(q, k, v)
        row["err_grad"] = max(max_rel(g, r) for g, r in zip(grads, ref_grads))
      del out
      row["fwd_ms"] = timed(fwd, (q, k, v), args.warmup, args.repeats)
      row["fwd_bwd_ms"] = timed(fwd_bwd, (q, k, v), args.warmup, args.repeats)
      row["fwd_tflops"] = fwd_flops / row["fwd_ms"] * 1e-9
      row["fwd_bwd_tflops"] = total_flops / row["fwd_bwd_ms"] * 1e-9
    except Exception as e:  # OOM, unsupported config, ...
      msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
      row["error"] = f"{type(e).__name__}: {msg[:160]}"
      if args.verbose:
        traceback.print_exc()
    rows.append(row)
    print(format_row(row), flush=True)
  return rows


def format_row(r):
  def f(key, fmt):
    return format(r[key], fmt) if key in r else "-"

  if "error" in r:
    return f"{r['impl']:>13} T={r['T']:>6} D={r['D']:>4}  FAILED {r['error']}"
  return (
    f"{r['impl']:>13} T={r['T']:>6} D={r['D']:>4}  "
    f"fwd {f('fwd_ms', '9.3f')} ms  fwd+bwd {f('fwd_bwd_ms', '9.3f')} ms  "
    f"({f('fwd_bwd_tflops', '7.2f')} TFLOP/s)  "
    f"err_out {f('err_out', '.2e')}  err_grad {f('err_grad', '.2e')}"
  )


def print_summary(rows, target_t, target_ratio):
  print(
    "\n| impl | B | H | T | D | fwd ms | fwd+bwd ms | fwd+bwd TFLOP/s | "
    "max rel err out | max rel err grad | fwd+bwd / cudnn_nobias |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  base = {(r["T"], r["D"]): r.get("fwd_bwd_ms") for r in rows if r["impl"] == "cudnn_nobias"}
  for r in rows:

    def f(key, fmt):
      return format(r[key], fmt) if key in r else "-"

    b = base.get((r["T"], r["D"]))
    ratio = format(r["fwd_bwd_ms"] / b, ".2f") if b and "fwd_bwd_ms" in r else "-"
    if "error" in r:
      print(f"| {r['impl']} | {r['B']} | {r['H']} | {r['T']} | {r['D']} | failed: {r['error'][:60]} | | | | | |")
      continue
    print(
      f"| {r['impl']} | {r['B']} | {r['H']} | {r['T']} | {r['D']} | "
      f"{f('fwd_ms', '.3f')} | {f('fwd_bwd_ms', '.3f')} | "
      f"{f('fwd_bwd_tflops', '.2f')} | {f('err_out', '.2e')} | "
      f"{f('err_grad', '.2e')} | {ratio} |"
    )
  print()
  for r in rows:
    if r["impl"] == "flash_alibi" and r["T"] == target_t and "fwd_bwd_ms" in r:
      b = base.get((r["T"], r["D"]))
      if b:
        ratio = r["fwd_bwd_ms"] / b
        verdict = "MET" if ratio <= target_ratio else "NOT met"
        print(
          f"target T={target_t} D={r['D']}: flash_alibi / cudnn_nobias = "
          f"{ratio:.2f} (target <= {target_ratio}) -> {verdict}"
        )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="tiny sizes (B=1,H=4,T=128,256,D=32), runs on CPU")
  p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
  p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument(
    "--impls", nargs="+", default=None, choices=ALL_IMPLS, help="default: xla cudnn cudnn_nobias flash_alibi pallas_mha"
  )
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--repeats", type=int, default=10)
  # Kernel options; None = the kernel's defaults for the head_dim (fa.default_tiles / default_num_warps /
  # default_num_stages).
  p.add_argument("--block-q", type=int, default=None)
  p.add_argument("--block-k", type=int, default=None)
  p.add_argument("--bwd-block-q", type=int, default=None)
  p.add_argument("--bwd-block-k", type=int, default=None)
  p.add_argument("--num-warps", type=int, default=None)
  p.add_argument("--num-stages", type=int, default=None)
  p.add_argument("--sweep", action="store_true", help="also time flash_alibi over a grid of tile sizes")
  p.add_argument("--grad-check-max-t", type=int, default=4096)
  p.add_argument("--target-t", type=int, default=8192)
  p.add_argument("--target-ratio", type=float, default=1.25)
  p.add_argument("--json", default=None, help="write rows to this file")
  p.add_argument("--verbose", action="store_true")
  args = p.parse_args(argv)

  on_gpu = jax.default_backend() == "gpu"
  if args.smoke:
    args.seq_lens, args.head_dims = [128, 256], [32]
    args.batch, args.heads = 1, 4
    args.warmup, args.repeats = 1, 3
    args.grad_check_max_t = 10**9
  impls = args.impls or (
    ["xla", "cudnn", "cudnn_nobias", "flash_alibi", "pallas_mha"] if on_gpu else ["xla", "flash_alibi", "reference"]
  )
  skipped = [i for i in impls if i in GPU_ONLY and not on_gpu]
  impls = [i for i in impls if i not in skipped]
  print(f"backend={jax.default_backend()} devices={jax.devices()} jax={jax.__version__} dtype={args.dtype}")
  if skipped:
    print(f"skipping GPU-only implementations on this backend: {skipped}")

  rows = []
  for d in args.head_dims:
    for t in args.seq_lens:
      rows += run_config(args, args.batch, args.heads, t, d, impls)
      if args.sweep and "flash_alibi" in impls:
        base = dict(vars(args))
        # Spill-free candidates on sm_90 per benchmarks/kernel_resources.py (warps None = the kernel's rule).
        for bq, bk, bbq, bbk, nw, ns in [
          (128, 64, 64, 64, None, 2),
          (128, 128, 64, 64, 8, 2),
          (128, 64, 64, 64, None, 4),
          (64, 64, 64, 64, None, 3),
          (128, 64, 64, 32, None, 3),
          (128, 64, 32, 64, None, 3),
        ]:
          args.block_q, args.block_k = bq, bk
          args.bwd_block_q, args.bwd_block_k, args.num_warps, args.num_stages = bbq, bbk, nw, ns
          for r in run_config(args, args.batch, args.heads, t, d, ["flash_alibi"]):
            r["impl"] = f"flash_alibi[{bq}x{bk},bwd{bbq}x{bbk},w{nw or 'rule'},s{ns}]"
            rows.append(r)
        for key in ("block_q", "block_k", "bwd_block_q", "bwd_block_k", "num_warps", "num_stages"):
          setattr(args, key, base[key])
  print_summary(rows, args.target_t, args.target_ratio)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        dict(backend=jax.default_backend(), device=str(jax.devices()[0]), jax=jax.__version__, rows=rows), f, indent=1
      )
  return rows


if __name__ == "__main__":
  main()
