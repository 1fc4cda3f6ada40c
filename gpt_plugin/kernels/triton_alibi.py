"""The Pallas Triton kernels of fused ALiBi flash attention (GPU; on CPU the same kernels run in interpret mode).

Three kernels: the forward (output and row log-sum-exp), dq, and dk+dv, joined by a custom VJP
(``triton_alibi_attention``). Scores ``(q_i . k_j) * sm_scale + slope_h * (j - i)`` are computed in fp32 inside
the tile (in base 2, so exp -> exp2), then causal and segment masking. Causal: the forward and dq kernels loop
only over key blocks up to the diagonal, dk/dv only over query blocks from it; blocks wholly below the diagonal
skip the mask arithmetic. Packed: each program also clips its loop to the ``[lo, hi)`` block range of its
segments (``common.segment_block_ranges``). Sequence lengths are padded to whole tiles (padded keys masked or
unreachable, padded query rows dropped), head_dim to the next power of two >= 16.

Launch defaults (``default_tiles``, ``default_num_warps``, ``default_num_stages``) and the debugging helper
``flash_alibi_block_counts`` (tiles each program loaded) live here too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from gpt_plugin.kernels.common import (
  MASK_VALUE,
  check_inputs,
  resolve_sm_scale,
  round_up,
  segment_block_ranges,
  segment_extent,
  warn_once,
)

try:  # The Triton backend module; absent on some jaxlib builds.
  from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover
  plgpu = None

__all__ = [
  "GPU_MAX_HEAD_DIM",
  "SUPPORTED_DTYPES",
  "triton_alibi_attention",
  "flash_alibi_block_counts",
  "default_tiles",
  "default_num_warps",
  "default_num_stages",
]

_LOG2E = math.log2(math.e)
GPU_MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def _next_pow2(x: int) -> int:
  return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def _is_pow2(x: int) -> bool:
  return x > 0 and (x & (x - 1)) == 0


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static configuration of one Pallas flash-attention call (hashable)."""

  seq_len: int  # real (unpadded) sequence length
  block_q: int  # forward kernel tiles
  block_k: int
  bwd_block_q: int  # backward kernels tiles
  bwd_block_k: int
  head_dim: int  # real head_dim (sm_scale is already resolved)
  sm_scale: float
  causal: bool
  has_segments: bool
  interpret: bool
  num_warps: Optional[int]
  num_stages: int
  debug_counts: bool = False


# Default launch by padded head_dim: tiles and pipelining depth with no register spills and shared memory within
# limits on sm_90 and sm_80, with and without packing, as reported by `benchmarks/kernel_resources.py` (registers,
# spills and shared memory of the compiled kernels). Timings on a GPU may move them (`benchmarks/attention.py --sweep`).
_DEFAULT_LAUNCH = {  # padded head_dim -> (block_q, block_k, bwd_block_q, bwd_block_k, num_stages)
  16: (128, 64, 64, 64, 3),
  32: (128, 64, 64, 64, 3),
  64: (128, 64, 64, 64, 3),
  128: (64, 64, 64, 64, 2),
  256: (32, 64, 32, 32, 2),
}


def _default_launch(head_dim: int):
  return _DEFAULT_LAUNCH[min(256, max(16, _next_pow2(head_dim)))]


def default_tiles(head_dim: int):
  """(block_q, block_k, bwd_block_q, bwd_block_k) used when the caller gives none."""
  return _default_launch(head_dim)[:4]


def default_num_stages(head_dim: int) -> int:
  """Triton software-pipelining depth used when the caller gives none."""
  return _default_launch(head_dim)[4]


def default_num_warps(kernel: str, block_q: int, block_k: int, head_dim: int) -> int:
  """Warps for one kernel ('fwd', 'dq' or 'dkdv') and tile: 8 spread a large tile's or a wide head's registers."""
  area, dp = block_q * block_k, max(16, _next_pow2(head_dim))
  if kernel == "fwd":
    return 8 if area >= 128 * 64 or dp >= 128 else 4
  return 8 if area >= 128 * 64 or dp >= 64 else 4


def _compiler_params(cfg: _Config, num_warps: int):
  if cfg.interpret or plgpu is None:
    return None
  cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
  return cls(num_warps=num_warps, num_stages=cfg.num_stages)


def _tile_mask(qp, kp, qseg, kseg, *, causal: bool, kv_len: Optional[int]):
  """Boolean keep-mask for a score tile; qp/kp (and segs) broadcast to it."""
  mask = None

  def _and(a, b):
    return b if a is None else jnp.logical_and(a, b)

  if causal:
    mask = _and(mask, kp <= qp)
  if qseg is not None:
    mask = _and(mask, qseg == kseg)
  if kv_len is not None:
    mask = _and(mask, kp < kv_len)
  return mask


def _dot_nt(a, b):
  """a @ b.T with fp32 accumulation (contracting the last dims)."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_nn(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------
# Pallas kernels.  Grid axis 0 walks sequence blocks, 1 batch, 2 heads.
# Scores are kept in base 2: s2 = s * log2(e), so exp -> exp2; slopes arrive
# pre-multiplied by log2(e) and the saved lse is log2-sum-exp2.
# ----------------------------------------------------------------------------
def _score_tile(q, k, kseg_ref, ks, start, bk, qp, qseg, slope, scale2, apply_causal, kv_len):
  """Scores of a [bq, bk] tile in log2 units: q.k * scale + ALiBi slope * (k_pos - q_pos), masked (causal when
  `apply_causal`, segments, padded keys) with MASK_VALUE. Shared by the forward and the dq kernel; `k` is the
  already loaded key tile."""
  kp = (start + jnp.arange(bk, dtype=jnp.int32))[None, :]
  s = _dot_nt(q, k) * scale2 + slope * (kp - qp).astype(jnp.float32)
  kseg = None if kseg_ref is None else kseg_ref[ks][None, :]
  mask = _tile_mask(qp, kp, qseg, kseg, causal=apply_causal, kv_len=kv_len)
  return s if mask is None else jnp.where(mask, s, MASK_VALUE)


def _split_trailing_refs(rest, cfg, num_outputs):
  """A kernel's refs after the slopes: when packed, (own-block segment ids, other-axis segment ids, first and
  end+1 block of the other axis that shares a segment with this block); then the outputs, then the debug tile
  counter. Returns (own_seg_ref, other_seg_ref, (lo_ref, hi_ref) or None, outputs, cnt_ref)."""
  rest = list(rest)
  own_seg_ref = other_seg_ref = bounds = None
  if cfg.has_segments:
    own_seg_ref, other_seg_ref, bounds, rest = rest[0], rest[1], (rest[2], rest[3]), rest[4:]
  cnt_ref = rest[num_outputs] if cfg.debug_counts else None
  return own_seg_ref, other_seg_ref, bounds, tuple(rest[:num_outputs]), cnt_ref


def _segment_bounds(bounds):
  """(lo, hi) scalars loaded from the packed-segment block-range refs, or (None, None) when not packed."""
  if bounds is None:
    return None, None
  return bounds[0][...], bounds[1][...]


def _clip_range(start, end, lo, hi):
  """[start, end) intersected with the segment block range [lo, hi) (no-op when not packed)."""
  if lo is None:
    return start, end
  return jnp.maximum(start, lo), jnp.minimum(end, hi)


def _loop_over_key_blocks(body, carry, i, bq, bk, num_k_blocks, causal, lo=None, hi=None):
  """Runs `body(j, carry, apply_causal=...)` over the key blocks that query block `i` can see.

  Causal: key blocks entirely at/below the first query of the block need no causal mask; blocks up to the one
  holding the last query need it; later blocks are fully masked and skipped (never loaded). Packed: only key
  blocks in [lo, hi), the blocks holding a segment present in query block `i`, are visited.
  """
  if not causal:
    return lax.fori_loop(*_clip_range(0, num_k_blocks, lo, hi), functools.partial(body, apply_causal=False), carry)
  n_full = lax.div(i * bq + 1, bk)
  n_end = lax.div((i + 1) * bq - 1, bk) + 1
  carry = lax.fori_loop(*_clip_range(0, n_full, lo, hi), functools.partial(body, apply_causal=False), carry)
  return lax.fori_loop(*_clip_range(n_full, n_end, lo, hi), functools.partial(body, apply_causal=True), carry)


def _fwd_kernel(q_ref, k_ref, v_ref, slope_ref, *rest, cfg: _Config, num_k_blocks: int, kv_len: Optional[int]):
  qseg_ref, kseg_ref, bounds, (o_ref, lse_ref), cnt_ref = _split_trailing_refs(rest, cfg, num_outputs=2)

  bq, bk = cfg.block_q, cfg.block_k
  i = pl.program_id(0)
  q = q_ref[...]
  qp = (i * bq + jnp.arange(bq, dtype=jnp.int32))[:, None]
  slope = slope_ref[...][:, None]  # [bq, 1], fp32
  qseg = None if qseg_ref is None else qseg_ref[...][:, None]
  scale2 = cfg.sm_scale * _LOG2E
  dp = q_ref.shape[-1]

  def body(j, carry, apply_causal):
    acc, m, l, cnt = carry
    start = pl.multiple_of(j * bk, bk)
    ks = pl.ds(start, bk)
    s = _score_tile(q, k_ref[ks, :], kseg_ref, ks, start, bk, qp, qseg, slope, scale2, apply_causal, kv_len)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = l * alpha + jnp.sum(p, axis=1)
    v = v_ref[ks, :]
    acc = acc * alpha[:, None] + _dot_nn(p.astype(v.dtype), v)
    return acc, m_new, l, cnt + 1

  carry = (
    jnp.zeros((bq, dp), jnp.float32),
    jnp.full((bq,), MASK_VALUE, jnp.float32),
    jnp.zeros((bq,), jnp.float32),
    jnp.int32(0),
  )
  carry = _loop_over_key_blocks(body, carry, i, bq, bk, num_k_blocks, cfg.causal, *_segment_bounds(bounds))
  acc, m, l, cnt = carry
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)
  if cnt_ref is not None:
    cnt_ref[...] = jnp.full((bq,), cnt, jnp.int32)


def _dq_kernel(
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  slope_ref,
  *rest,
  cfg: _Config,
  num_k_blocks: int,
  kv_len: Optional[int],
):
  qseg_ref, kseg_ref, bounds, (dq_ref,), cnt_ref = _split_trailing_refs(rest, cfg, num_outputs=1)

  bq, bk = cfg.bwd_block_q, cfg.bwd_block_k
  i = pl.program_id(0)
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...][:, None]
  delta = delta_ref[...][:, None]
  qp = (i * bq + jnp.arange(bq, dtype=jnp.int32))[:, None]
  slope = slope_ref[...][:, None]
  qseg = None if qseg_ref is None else qseg_ref[...][:, None]
  scale2 = cfg.sm_scale * _LOG2E

  def body(j, carry, apply_causal):
    dq, cnt = carry
    start = pl.multiple_of(j * bk, bk)
    ks = pl.ds(start, bk)
    k = k_ref[ks, :]
    v = v_ref[ks, :]
    s = _score_tile(q, k, kseg_ref, ks, start, bk, qp, qseg, slope, scale2, apply_causal, kv_len)
    p = jnp.exp2(s - lse)
    dp = _dot_nt(do, v)
    ds = p * (dp - delta)
    dq = dq + _dot_nn(ds.astype(k.dtype), k)
    return dq, cnt + 1

  carry = (jnp.zeros(q_ref.shape, jnp.float32), jnp.int32(0))
  carry = _loop_over_key_blocks(body, carry, i, bq, bk, num_k_blocks, cfg.causal, *_segment_bounds(bounds))
  dq, cnt = carry
  dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)
  if cnt_ref is not None:
    cnt_ref[...] = jnp.full((bq,), cnt, jnp.int32)


def _dkdv_kernel(
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  slope_ref,
  *rest,
  cfg: _Config,
  num_q_blocks: int,
  kv_len: Optional[int],
):
  kseg_ref, qseg_ref, bounds, (dk_ref, dv_ref), cnt_ref = _split_trailing_refs(rest, cfg, num_outputs=2)

  # Tiles are transposed: rows are keys, columns are queries.
  bq, bk = cfg.bwd_block_q, cfg.bwd_block_k
  j = pl.program_id(0)
  k = k_ref[...]
  v = v_ref[...]
  kp = (j * bk + jnp.arange(bk, dtype=jnp.int32))[:, None]
  slope = slope_ref[...][:, None]
  kseg = None if kseg_ref is None else kseg_ref[...][:, None]
  scale2 = cfg.sm_scale * _LOG2E

  def body(i, carry, apply_causal):
    dk, dv, cnt = carry
    start = pl.multiple_of(i * bq, bq)
    qs = pl.ds(start, bq)
    q = q_ref[qs, :]
    do = do_ref[qs, :]
    lse = lse_ref[qs][None, :]
    delta = delta_ref[qs][None, :]
    qp = (start + jnp.arange(bq, dtype=jnp.int32))[None, :]
    st = _dot_nt(k, q) * scale2 + slope * (kp - qp).astype(jnp.float32)
    qseg = None if qseg_ref is None else qseg_ref[qs][None, :]
    mask = _tile_mask(qp, kp, qseg, kseg, causal=apply_causal, kv_len=kv_len)
    if mask is not None:
      st = jnp.where(mask, st, MASK_VALUE)
    pt = jnp.exp2(st - lse)  # [bk, bq]
    dv = dv + _dot_nn(pt.astype(do.dtype), do)
    dpt = _dot_nt(v, do)
    dst = pt * (dpt - delta)
    dk = dk + _dot_nn(dst.astype(q.dtype), q)
    return dk, dv, cnt + 1

  carry = (jnp.zeros(k_ref.shape, jnp.float32), jnp.zeros(v_ref.shape, jnp.float32), jnp.int32(0))
  lo, hi = _segment_bounds(bounds)
  if cfg.causal:
    # Query blocks before the one holding this key block's first key are
    # fully masked (skipped); blocks from i_full on see every key of the block.
    i_lo = lax.div(j * bk, bq)
    i_full = jnp.minimum(lax.div((j + 1) * bk + bq - 2, bq), num_q_blocks)
    carry = lax.fori_loop(*_clip_range(i_lo, i_full, lo, hi), functools.partial(body, apply_causal=True), carry)
    carry = lax.fori_loop(
      *_clip_range(i_full, num_q_blocks, lo, hi), functools.partial(body, apply_causal=False), carry
    )
  else:
    carry = lax.fori_loop(*_clip_range(0, num_q_blocks, lo, hi), functools.partial(body, apply_causal=False), carry)
  dk, dv, cnt = carry
  dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  if cnt_ref is not None:
    cnt_ref[...] = jnp.full((bk,), cnt, jnp.int32)


# ----------------------------------------------------------------------------
# pallas_call wrappers (inputs already padded: [B, Tp, H, Dp])
# ----------------------------------------------------------------------------
def _kv_len(cfg: _Config, padded_len: int) -> Optional[int]:
  # Causal: real queries never reach padded keys (they come after every real
  # position), so only non-causal attention needs the key-length mask.
  if cfg.causal or padded_len == cfg.seq_len:
    return None
  return cfg.seq_len


def _scalar_per_block_spec():
  return pl.BlockSpec((None, None), lambda i, b, h: (b, i))


def _seq_block_spec(block: int, dp: int):
  return pl.BlockSpec((None, block, None, dp), lambda i, b, h: (b, i, h, 0))


def _full_seq_spec(tp: int, dp: int):
  return pl.BlockSpec((None, tp, None, dp), lambda i, b, h: (b, 0, h, 0))


def _row_spec(block: int):
  """The program's block of a [B, H, Tp] per-position row (lse, delta, debug tile counts)."""
  return pl.BlockSpec((None, None, block), lambda i, b, h: (b, h, i))


def _slope_input(slopes2, num_heads: int, block: int):
  """(spec, array): each head's slope repeated over the `block` rows of a program."""
  return pl.BlockSpec((None, block), lambda i, b, h: (h, 0)), jnp.broadcast_to(slopes2[:, None], (num_heads, block))


def _segment_inputs(cfg: _Config, seg, block: int, other_block: int, tp: int):
  """(specs, arrays) of the packed-segment refs `_split_trailing_refs` expects after the slopes: the segment ids of
  the program's `block`, those of the whole other axis, and the [lo, hi) range of its `other_block`-sized blocks
  that share a segment with the program's block. Empty when not packed."""
  if not cfg.has_segments:
    return [], []
  ids, extent = seg
  specs = [
    pl.BlockSpec((None, block), lambda i, b, h: (b, i)),
    pl.BlockSpec((None, tp), lambda i, b, h: (b, 0)),
    _scalar_per_block_spec(),
    _scalar_per_block_spec(),
  ]
  return specs, [ids, ids, *segment_block_ranges(extent, block, other_block)]


def _launch(
  cfg: _Config, kernel, *, block: int, shape, in_specs, args, out_shape, out_specs, num_warps: int, name: str
):
  """pallas_call over the grid (Tp // block, batch, heads), with the debug tile-count output last when
  `cfg.debug_counts`. `shape`: the padded q's [B, Tp, H, Dp]."""
  bsz, tp, nh, _ = shape
  if cfg.debug_counts:
    out_shape = [*out_shape, jax.ShapeDtypeStruct((bsz, nh, tp), jnp.int32)]
    out_specs = [*out_specs, _row_spec(block)]
  return pl.pallas_call(
    kernel,
    grid=(tp // block, bsz, nh),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=_compiler_params(cfg, num_warps),
    interpret=cfg.interpret,
    name=name,
  )(*args)


def _fwd_call(cfg: _Config, q, k, v, slopes2, seg):
  """seg: None, or (padded segment ids [B, Tp], their segment_extent)."""
  bsz, tp, nh, dp = q.shape
  bq, bk = cfg.block_q, cfg.block_k
  slope_spec, slope_rows = _slope_input(slopes2, nh, bq)
  seg_specs, seg_args = _segment_inputs(cfg, seg, bq, bk, tp)
  return _launch(
    cfg,
    functools.partial(_fwd_kernel, cfg=cfg, num_k_blocks=tp // bk, kv_len=_kv_len(cfg, tp)),
    block=bq,
    shape=q.shape,
    in_specs=[_seq_block_spec(bq, dp), _full_seq_spec(tp, dp), _full_seq_spec(tp, dp), slope_spec, *seg_specs],
    args=[q, k, v, slope_rows, *seg_args],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bsz, nh, tp), jnp.float32)],
    out_specs=[_seq_block_spec(bq, dp), _row_spec(bq)],
    num_warps=cfg.num_warps or default_num_warps("fwd", bq, bk, dp),
    name="flash_alibi_fwd",
  )


def _bwd_calls(cfg: _Config, q, k, v, slopes2, seg, o, lse, do):
  """The two backward launches: dq (grid over query blocks), then dk and dv (grid over key blocks)."""
  # delta_i = sum_d o_id * do_id (fp32), laid out like lse: [B, H, Tp].
  delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32))
  dq_out = _bwd_dq_call(cfg, q, k, v, slopes2, seg, lse, delta, do)
  dkdv_out = _bwd_dkdv_call(cfg, q, k, v, slopes2, seg, lse, delta, do)
  return dq_out, dkdv_out


def _bwd_warps(cfg: _Config, kernel: str, dp: int) -> int:
  return cfg.num_warps or default_num_warps(kernel, cfg.bwd_block_q, cfg.bwd_block_k, dp)


def _bwd_dq_call(cfg: _Config, q, k, v, slopes2, seg, lse, delta, do):
  """dq: grid over query blocks; each program reads its q/do/lse/delta block and the whole k and v."""
  _, tp, nh, dp = q.shape
  bq, bk = cfg.bwd_block_q, cfg.bwd_block_k
  slope_spec, slope_rows = _slope_input(slopes2, nh, bq)
  seg_specs, seg_args = _segment_inputs(cfg, seg, bq, bk, tp)
  block, full = _seq_block_spec(bq, dp), _full_seq_spec(tp, dp)
  return _launch(
    cfg,
    functools.partial(_dq_kernel, cfg=cfg, num_k_blocks=tp // bk, kv_len=_kv_len(cfg, tp)),
    block=bq,
    shape=q.shape,
    in_specs=[block, full, full, block, _row_spec(bq), _row_spec(bq), slope_spec, *seg_specs],
    args=[q, k, v, do, lse, delta, slope_rows, *seg_args],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)],
    out_specs=[block],
    num_warps=_bwd_warps(cfg, "dq", dp),
    name="flash_alibi_bwd_dq",
  )


def _bwd_dkdv_call(cfg: _Config, q, k, v, slopes2, seg, lse, delta, do):
  """dk, dv: grid over key blocks; each program reads its k/v block and the whole q, do, lse and delta."""
  _, tp, nh, dp = q.shape
  bq, bk = cfg.bwd_block_q, cfg.bwd_block_k
  full_row = pl.BlockSpec((None, None, tp), lambda j, b, h: (b, h, 0))
  slope_spec, slope_rows = _slope_input(slopes2, nh, bk)
  seg_specs, seg_args = _segment_inputs(cfg, seg, bk, bq, tp)
  block, full = _seq_block_spec(bk, dp), _full_seq_spec(tp, dp)
  return _launch(
    cfg,
    functools.partial(_dkdv_kernel, cfg=cfg, num_q_blocks=tp // bq, kv_len=_kv_len(cfg, tp)),
    block=bk,
    shape=q.shape,
    in_specs=[full, block, block, full, full_row, full_row, slope_spec, *seg_specs],
    args=[q, k, v, do, lse, delta, slope_rows, *seg_args],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    out_specs=[block, block],
    num_warps=_bwd_warps(cfg, "dkdv", dp),
    name="flash_alibi_bwd_dkdv",
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(cfg: _Config, q, k, v, slopes2, seg):
  return _fwd_call(cfg, q, k, v, slopes2, seg)[0]


def _flash_core_fwd(cfg, q, k, v, slopes2, seg):
  o, lse = _fwd_call(cfg, q, k, v, slopes2, seg)[:2]
  return o, (q, k, v, slopes2, seg, o, lse)


def _flash_core_bwd(cfg, res, do):
  q, k, v, slopes2, seg, o, lse = res
  (dq,), (dk, dv) = _bwd_calls(cfg, q, k, v, slopes2, seg, o, lse, do)
  # slopes are constants (no bias gradient); segment ids (and their extents) are integers.
  return dq, dk, dv, jnp.zeros_like(slopes2), None


_flash_core.defvjp(_flash_core_fwd, _flash_core_bwd)


# ----------------------------------------------------------------------------
# Padding, tiles and the custom-VJP call
# ----------------------------------------------------------------------------
def _pallas_plan(q, block_q, block_k, bwd_block_q, bwd_block_k, interpret):
  """Validates and returns (bq, bk, bbq, bbk, padded_len, padded_head_dim)."""
  _, t, _, d = q.shape
  if not interpret:
    if q.dtype not in SUPPORTED_DTYPES:
      raise NotImplementedError(f"flash_alibi (Triton) supports bf16/f16/f32 inputs, got {q.dtype}.")
    if d > GPU_MAX_HEAD_DIM:
      raise NotImplementedError(
        f"flash_alibi (Triton): head_dim={d} > {GPU_MAX_HEAD_DIM} does not "
        "fit the kernel's register/shared-memory tiles; use "
        "implementation='reference' or cudnn."
      )
    for name, b in (
      ("block_q", block_q),
      ("block_k", block_k),
      ("bwd_block_q", bwd_block_q),
      ("bwd_block_k", bwd_block_k),
    ):
      if not (_is_pow2(b) and b >= 16):
        raise NotImplementedError(
          f"flash_alibi (Triton): {name}={b} must be a power of two >= 16 "
          "(Triton tile shapes are powers of two; tl.dot needs >= 16)."
        )
  dp = max(16, _next_pow2(d))
  if dp != d and not interpret:
    warn_once(
      f"pad_head_dim_{d}",
      f"flash_alibi: head_dim={d} is not a power of two >= 16; q/k/v are "
      f"zero-padded to {dp} for the Triton tiles (extra memory traffic).",
    )
  # Short sequences: shrink the tiles (keeps powers of two).
  cap = max(16, _next_pow2(t))
  bq, bk = min(block_q, cap), min(block_k, cap)
  bbq, bbk = min(bwd_block_q, cap), min(bwd_block_k, cap)
  mult = math.lcm(bq, bk, bbq, bbk)
  return bq, bk, bbq, bbk, round_up(t, mult), dp


def _flash_pallas(
  q,
  k,
  v,
  slopes,
  segment_ids,
  *,
  causal,
  sm_scale,
  block_q,
  block_k,
  bwd_block_q,
  bwd_block_k,
  interpret,
  num_warps,
  num_stages,
  debug_counts=False,
):
  """The static config and the padded kernel inputs: (cfg, q, k, v, slopes * log2(e), seg). Tiles and stages left
  None take this head_dim's launch defaults."""
  _, t, _, d = q.shape
  block_q, block_k, bwd_block_q, bwd_block_k = _resolve_tiles(d, block_q, block_k, bwd_block_q, bwd_block_k)
  num_stages = num_stages or default_num_stages(d)
  bq, bk, bbq, bbk, tp, dp = _pallas_plan(q, block_q, block_k, bwd_block_q, bwd_block_k, interpret)
  cfg = _Config(
    seq_len=t,
    block_q=bq,
    block_k=bk,
    bwd_block_q=bbq,
    bwd_block_k=bbk,
    head_dim=d,
    sm_scale=resolve_sm_scale(sm_scale, d),
    causal=bool(causal),
    has_segments=segment_ids is not None,
    interpret=bool(interpret),
    num_warps=num_warps,
    num_stages=num_stages,
    debug_counts=debug_counts,
  )
  pad = ((0, 0), (0, tp - t), (0, 0), (0, dp - d))
  if tp != t or dp != d:
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  seg = None
  if segment_ids is not None:
    # Padded positions get their own segment id (-1 is never compared with a
    # real query because real queries are kept, padded ones are dropped).
    ids = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, tp - t)), constant_values=-1)
    # With each segment's first/last position, computed once for the forward
    # and both backward kernels (their packed block ranges).
    seg = (ids, segment_extent(ids))
  slopes2 = lax.stop_gradient(jnp.asarray(slopes, jnp.float32)) * _LOG2E
  return cfg, q, k, v, slopes2, seg


def _resolve_tiles(head_dim, block_q, block_k, bwd_block_q, bwd_block_k):
  """Caller's tiles, else the defaults for this head_dim; the backward tiles never exceed the forward ones."""
  fbq, fbk, fbbq, fbbk = default_tiles(head_dim)
  block_q, block_k = block_q or fbq, block_k or fbk
  return block_q, block_k, bwd_block_q or min(block_q, fbbq), bwd_block_k or min(block_k, fbbk)


def triton_alibi_attention(
  q,
  k,
  v,
  *,
  slopes,
  segment_ids=None,
  causal=True,
  sm_scale=None,
  block_q=None,
  block_k=None,
  bwd_block_q=None,
  bwd_block_k=None,
  interpret=False,
  num_warps=None,
  num_stages=None,
):
  """The Triton kernels on q/k/v ``[batch, seq, heads, head_dim]`` (arguments as ``flash_alibi_attention``);
  differentiable. Tiles, warps and stages default to this head_dim's launch defaults."""
  cfg, qp, kp, vp, slopes2, seg = _flash_pallas(
    q,
    k,
    v,
    slopes,
    segment_ids,
    causal=causal,
    sm_scale=sm_scale,
    block_q=block_q,
    block_k=block_k,
    bwd_block_q=bwd_block_q,
    bwd_block_k=bwd_block_k,
    interpret=bool(interpret),
    num_warps=num_warps,
    num_stages=num_stages,
  )
  out = _flash_core(cfg, qp, kp, vp, slopes2, seg)
  _, t, _, d = q.shape
  return out[:, :t, :, :d]


def flash_alibi_block_counts(
  q,
  k,
  v,
  *,
  slopes,
  segment_ids=None,
  causal=True,
  sm_scale=None,
  block_q=None,
  block_k=None,
  bwd_block_q=None,
  bwd_block_k=None,
  interpret=True,
):
  """Debug helper: how many tiles each kernel program actually processed.

  Runs the forward, dq and dk/dv kernels with an iteration counter and
  returns ``(out, fwd, dq, dkdv)`` where ``fwd``/``dq`` are ``[B, H,
  num_q_blocks]`` and ``dkdv`` is ``[B, H, num_k_blocks]`` int32 counts of
  inner-loop iterations (loaded key/query tiles).  With causal masking a
  dense kernel would report ``num_blocks`` everywhere.
  """
  check_inputs(q, k, v, slopes, segment_ids, name="flash_alibi_attention")
  cfg, qp, kp, vp, slopes2, seg = _flash_pallas(
    q,
    k,
    v,
    slopes,
    segment_ids,
    causal=causal,
    sm_scale=sm_scale,
    block_q=block_q,
    block_k=block_k,
    bwd_block_q=bwd_block_q,
    bwd_block_k=bwd_block_k,
    interpret=interpret,
    num_warps=None,
    num_stages=None,
    debug_counts=True,
  )
  o, lse, cnt_f = _fwd_call(cfg, qp, kp, vp, slopes2, seg)
  do = jnp.ones_like(o)
  (_, cnt_dq), (_, _, cnt_kv) = _bwd_calls(cfg, qp, kp, vp, slopes2, seg, o, lse, do)
  t, d = q.shape[1], q.shape[3]
  return (
    o[:, :t, :, :d],
    cnt_f[:, :, :: cfg.block_q],
    cnt_dq[:, :, :: cfg.bwd_block_q],
    cnt_kv[:, :, :: cfg.bwd_block_k],
  )
