"""Registers, spills and shared memory of the flash-ALiBi Triton kernels, without a GPU.

Lowers the forward, dq and dk/dv kernels of `gpt_plugin.kernels.triton_alibi` (through `flash_alibi`) to Triton IR
on the CPU (the same Pallas lowering jax runs on a GPU), compiles that IR with the `triton` compiler from PyPI for
an NVIDIA target (sm_90 by default), and runs `ptxas -v` on the PTX. It prints, per kernel and launch configuration,
the shared memory, registers per thread and spill bytes, and flags configurations that spill or do not fit the
card's shared memory. Spills and shared-memory overflows are the usual reasons a tile choice is slow or fails to
launch, so this prunes the tile grid before a GPU session and guards the front end's default tiles.

It is a proxy: XLA compiles Pallas kernels with its own Triton build, so counts can differ a little from what a GPU
run uses; timing still needs a GPU (`benchmarks/attention.py --sweep`).

    pip install -e ".[kernels]"          # the triton compiler (a separate venv works too, see --triton-python)
    python benchmarks/kernel_resources.py                     # the default tiles, D = 32, 64, 128, 256, sm_90 + sm_80
    python benchmarks/kernel_resources.py --grid --head-dims 64 128 --archs 90
    python benchmarks/kernel_resources.py --tiles 128x64 --warps 4 8 --stages 2 3

Exit status 1 when a default configuration fails to compile, does not fit the shared memory of any listed
architecture, or spills on the first one (sm_90 by default), so the check can gate a change of defaults.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Largest dynamic shared memory one block may use (bytes), per compute capability.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
KERNELS = ("fwd", "dq", "dkdv")
GRID_TILES = ("128x128", "128x64", "64x128", "64x64", "128x32", "64x32", "32x64", "32x32")

# Runs under the Python that has `triton` (maybe another venv): compiles each job, prints one JSON line per job.
_COMPILE_SCRIPT = r"""
import json, re, subprocess, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nv
ptxas = nv.get_ptxas().path if hasattr(nv, "get_ptxas") else nv._path_to_binary("ptxas")[0]
for line in sys.stdin:
  job = json.loads(line)
  res = dict(job)
  try:
    k = triton.compile(job["ttir"], target=GPUTarget("cuda", job["arch"], 32),
                       options=dict(num_warps=job["warps"], num_stages=job["stages"]))
    ptx_path = job["ttir"] + f".sm{job['arch']}.w{job['warps']}s{job['stages']}.ptx"
    open(ptx_path, "w").write(k.asm["ptx"])
    gpu = "sm_90a" if job["arch"] == 90 else f"sm_{job['arch']}"
    out = subprocess.run([ptxas, "-v", "--gpu-name", gpu, ptx_path, "-o", ptx_path + ".cubin"],
                         capture_output=True, text=True)
    regs = re.findall(r"Used (\d+) registers", out.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", out.stderr)
    res.update(shared=int(k.metadata.shared), regs=int(regs[0]) if regs else None,
               spill=int(spills[0]) if spills else None, ok=out.returncode == 0,
               error=None if out.returncode == 0 else out.stderr[-400:])
  except Exception as e:  # noqa: BLE001 - report per configuration
    res.update(ok=False, error=f"{type(e).__name__}: {str(e)[-400:]}")
  print(json.dumps(res), flush=True)
"""


def lower_to_ttir(head_dim, tiles, segments, seq_len, out_dir):
  """Lowers the three kernels for `tiles` = (bq, bk, bwd_bq, bwd_bk) and writes one .ttir file per kernel."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from gpt_plugin.kernels import flash_alibi as fa  # pylint: disable=import-outside-toplevel

  try:
    from jax._src.pallas.triton import pallas_call_registration as registration
  except ImportError as e:
    raise SystemExit(f"this jax ({jax.__version__}) has no Pallas Triton lowering module: {e}")
  if not hasattr(registration, "lowering") or not hasattr(registration.lowering, "lower_jaxpr_to_triton_module"):
    raise SystemExit(f"jax {jax.__version__}: Pallas' Triton lowering moved; update lower_to_ttir() in {__file__}")

  modules = []
  original = registration.lowering.lower_jaxpr_to_triton_module

  def recording(*args, **kwargs):
    result = original(*args, **kwargs)
    modules.append(result.module.operation.get_asm())
    return result

  bq, bk, bbq, bbk = tiles
  heads = 4
  x = jax.ShapeDtypeStruct((1, seq_len, heads, head_dim), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  slopes = jnp.asarray(fa.alibi_slopes(heads))

  def loss(q, k, v, s):
    o = fa.flash_alibi_attention(
      q,
      k,
      v,
      slopes=slopes,
      segment_ids=s if segments else None,
      implementation="triton",
      interpret=False,
      block_q=bq,
      block_k=bk,
      bwd_block_q=bbq,
      bwd_block_k=bbk,
    )
    return o.astype(jnp.float32).sum()

  registration.lowering.lower_jaxpr_to_triton_module = recording
  try:
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x, seg).lower(lowering_platforms=("cuda",))
  finally:
    registration.lowering.lower_jaxpr_to_triton_module = original
  if len(modules) != 3:
    raise SystemExit(f"expected 3 Triton modules (fwd, dq, dk/dv), lowering produced {len(modules)}")
  paths = {}
  for name, text in zip(KERNELS, modules):
    paths[name] = os.path.join(
      out_dir, f"{name}_d{head_dim}_{bq}x{bk}_bwd{bbq}x{bbk}_{'seg' if segments else 'noseg'}.ttir"
    )
    with open(paths[name], "w") as f:
      f.write(text)
  return paths


def parse_tile(text):
  try:
    a, b = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"tile {text!r} is not of the form 128x64") from None
  return a, b


def build_jobs(args, out_dir):
  """Lowers every needed kernel once and returns the compile jobs."""
  from gpt_plugin.kernels import flash_alibi as fa  # pylint: disable=import-outside-toplevel

  jobs, lowered = [], {}
  for d in args.head_dims:
    if args.grid or args.tiles:
      configs = []
      warp_choices = [None] if args.rule_warps else args.warps
      for (bq, bk), warps, stages in itertools.product(
        args.tiles or [parse_tile(t) for t in GRID_TILES], warp_choices, args.stages
      ):
        for kernel in KERNELS:  # the same tiles for the forward and the backward kernels
          configs.append((kernel, (bq, bk, bq, bk), warps or fa.default_num_warps(kernel, bq, bk, d), stages, False))
    else:
      tiles = fa.default_tiles(d)
      configs = [
        (
          kernel,
          tiles,
          fa.default_num_warps(kernel, *(tiles[:2] if kernel == "fwd" else tiles[2:]), d),
          fa.default_num_stages(d),
          True,
        )
        for kernel in KERNELS
      ]
    for kernel, tiles, warps, stages, is_default in configs:
      key = (d, tiles)
      if key not in lowered:
        lowered[key] = lower_to_ttir(d, tiles, args.segments, args.seq_len, out_dir)
      for arch in args.archs:
        jobs.append(
          dict(
            kernel=kernel,
            head_dim=d,
            tiles=list(tiles),
            warps=warps,
            stages=stages,
            arch=arch,
            default=is_default,
            ttir=lowered[key][kernel],
          )
        )
  return jobs


def verdict(r):
  if not r["ok"]:
    return "FAILED"
  problems = []
  if r["spill"]:
    problems.append(f"SPILLS {r['spill']} B")
  limit = SHARED_LIMIT.get(r["arch"])
  if limit is not None and r["shared"] > limit:
    problems.append(f"SHARED > {limit // 1024} KiB")
  return ", ".join(problems) or "ok"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128, 256])
  p.add_argument("--archs", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
  p.add_argument("--grid", action="store_true", help=f"all of {' '.join(GRID_TILES)} x --warps x --stages")
  p.add_argument("--tiles", type=parse_tile, nargs="+", default=None, help="explicit tiles, e.g. 128x64 64x64")
  p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
  p.add_argument(
    "--rule-warps",
    action="store_true",
    help="with --grid/--tiles: the front end's warp rule (default_num_warps) instead of --warps",
  )
  p.add_argument("--stages", type=int, nargs="+", default=[2])
  p.add_argument(
    "--no-segments", dest="segments", action="store_false", help="lower without packing segment ids (default: with)"
  )
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--triton-python", default=sys.executable, help="a Python that can import triton (default: this one)")
  p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
  p.add_argument("--json", default=None, help="write all rows to this file")
  args = p.parse_args(argv)

  probe = subprocess.run(
    [args.triton_python, "-c", "import triton; print(triton.__version__)"], capture_output=True, text=True
  )
  if probe.returncode != 0:
    raise SystemExit(
      f"{args.triton_python} cannot import triton; pip install -e '.[kernels]' or pass "
      "--triton-python /path/to/venv/bin/python"
    )
  import jax  # pylint: disable=import-outside-toplevel

  print(
    f"jax {jax.__version__} (Pallas lowering), triton {probe.stdout.strip()} (compiler), "
    f"segments={'yes' if args.segments else 'no'}, T={args.seq_len}"
  )

  with tempfile.TemporaryDirectory(prefix="flash_alibi_ttir_") as out_dir:
    jobs = build_jobs(args, out_dir)
    print(f"compiling {len(jobs)} kernel configurations with {args.jobs} worker(s)", flush=True)
    workers = [
      subprocess.Popen(
        [args.triton_python, "-c", _COMPILE_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for _ in range(max(1, min(args.jobs, len(jobs))))
    ]
    feeds = ["".join(json.dumps(j) + "\n" for j in jobs[w :: len(workers)]) for w in range(len(workers))]
    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:
      results = list(pool.map(lambda wf: wf[0].communicate(wf[1]), zip(workers, feeds)))
    rows = [json.loads(line) for out, _ in results for line in out.splitlines() if line.startswith("{")]
    if len(rows) != len(jobs):
      errors = "\n".join(err[-1500:] for _, err in results if err)
      raise SystemExit(f"the triton compile step failed ({len(rows)} of {len(jobs)} results):\n{errors}")

  header = (
    f"{'kernel':6} {'D':>4} {'tiles (fwd / bwd)':>22} {'warps':>5} {'stages':>6} {'sm':>3} "
    f"{'shared KiB':>10} {'regs':>4} {'spill B':>7}  verdict"
  )
  print(header)
  print("-" * len(header))
  bad_defaults = 0
  primary = args.archs[0]
  for r in sorted(
    rows, key=lambda r: (r["head_dim"], r["tiles"], r["warps"], r["stages"], KERNELS.index(r["kernel"]), -r["arch"])
  ):
    v = verdict(r)
    # Gate: no compile failure or shared-memory overflow anywhere, and no spill on the primary architecture (other
    # architectures' spills are reported, not gated: a few bytes on sm_80 cost little).
    bad_defaults += int(r["default"] and v != "ok" and (r["arch"] == primary or "SPILLS" not in v or "," in v))
    bq, bk, bbq, bbk = r["tiles"]
    tiles = f"{bq}x{bk} / {bbq}x{bbk}"
    shared = f"{r['shared'] / 1024:.0f}" if r.get("shared") is not None else "-"
    print(
      f"{r['kernel']:6} {r['head_dim']:>4} {tiles:>22} {r['warps']:>5} {r['stages']:>6} {r['arch']:>3} "
      f"{shared:>10} {r.get('regs') or '-':>4} {r.get('spill') if r.get('spill') is not None else '-':>7}  {v}"
      + (f"  {r['error']}" if r.get("error") else "")
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  if bad_defaults:
    print(
      f"\n{bad_defaults} default configuration(s) fail to compile, overflow shared memory or spill on sm_{primary}."
    )
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
