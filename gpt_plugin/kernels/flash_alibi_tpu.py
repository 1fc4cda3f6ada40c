"""ALiBi flash attention as Pallas TPU (Mosaic) kernels, with no T x T bias.

Public API
----------
``flash_alibi_tpu(q, k, v, *, slopes, segment_ids=None, causal=True,
sm_scale=None, block_q=128, block_k=128, interpret=False)``
    q, k, v: ``[batch, seq, heads, head_dim]``, same shape and dtype (bf16 or
    f32); ``slopes``: ``[heads]`` f32; ``segment_ids``: optional
    ``[batch, seq]`` int32.  Score of query i and key j in head h::

        s = (q_i . k_j) * sm_scale + slopes[h] * (j - i)

    in fp32, masked causally (``j <= i``) and by segment
    (``segment_ids[i] == segment_ids[j]``), then an fp32 online softmax.
    Returns ``[batch, seq, heads, head_dim]`` in q's dtype.  ``sm_scale``
    defaults to ``1/sqrt(head_dim)``.  Same semantics as the GPU kernel
    ``gpt_plugin.kernels.flash_alibi.flash_alibi_attention``.

    Differentiable through ``jax.custom_vjp``: the forward saves the row
    log-sum-exp; the backward runs a dq kernel and a dk/dv kernel that
    recompute the score tiles, with ``delta = rowsum(o * do)``.  ``slopes``
    get a zero gradient (constants); ``segment_ids`` are integers.

    ``interpret=True`` runs the kernels in Pallas' TPU interpret mode (CPU);
    so does any call traced under ``pltpu.force_tpu_interpret_mode()``.

Design
------
* Layout: the wrapper transposes to ``[B, H, T, D]`` so that a block is a
  ``(block, head_dim)`` matrix.  The forward and dq kernels run on a grid
  ``(batch, heads, q_blocks, k_blocks)``, the dk/dv kernel on
  ``(batch, heads, k_blocks, q_blocks)``; the last (reduction) axis is
  "arbitrary", the others "parallel".  fp32 accumulators (m, l, acc; dq;
  dk, dv) live in VMEM scratch, are initialised at the first reduction step
  and written out at the last one.
* ALiBi is built in-kernel from 2-D ``broadcasted_iota`` positions; the head's
  slope is read from SMEM (a scalar-prefetch operand).
* The forward and dq kernels work on ``[block_q, block_k]`` score tiles; the
  dk/dv kernel on transposed ``[block_k, block_q]`` tiles (keys as rows), so
  every matmul is a plain or rhs-transposed one and no tile is transposed.
  Per-query vectors therefore come in two layouts: columns broadcast over the
  128 lanes (``[..., T, 128]``: lse, delta, segment ids for q-row tiles) and
  rows broadcast over 8 sublanes (``[..., 8, T]``: for the transposed tiles
  and key segment ids).
* Causal block skipping: tiles entirely above the diagonal are not computed
  (``pl.when``), and the index maps clamp the block a skipped step reads to
  the nearest computed one, so skipped steps issue no new DMA.
* Packed sequences: for every block, the range of blocks on the other axis
  holding one of its segments is computed in the wrapper (from each segment's
  first and last position, valid for any id layout) and scalar-prefetched;
  tiles outside it are skipped and clamped the same way.
* Padding: the sequence is zero-padded to a multiple of the blocks; padded
  keys are masked (non-causal) or unreachable (causal), padded query rows are
  dropped.  head_dim <= 128 is used as is (a block spanning the whole dim);
  a larger head_dim is zero-padded to a multiple of 128 (the lane width).
  ``block_q`` and ``block_k`` must be multiples of 128; a sequence that fits
  in one block (after rounding up to 8) runs as a single tile.
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
from jax.experimental.pallas import tpu as pltpu

from gpt_plugin.kernels.common import (
  MASK_VALUE,
  check_inputs,
  resolve_sm_scale,
  round_up,
  segment_block_ranges,
  segment_extent,
)

__all__ = ["flash_alibi_tpu"]

_LANES = 128
_SUBLANES = 8
_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static description of one call (hashable: a custom_vjp nondiff arg)."""

  seq_len: int  # real (unpadded) sequence length
  block_q: int
  block_k: int
  sm_scale: float
  causal: bool
  packed: bool
  interpret: bool

  def kv_len(self, padded_len: int) -> Optional[int]:
    """Bound of the key-padding mask; causal queries never reach padding."""
    if self.causal or padded_len == self.seq_len:
      return None
    return self.seq_len


@dataclasses.dataclass(frozen=True)
class _Segments:
  """Packed-sequence operands in kernel layouts (a pytree of int32 arrays)."""

  ids_col: jax.Array  # [B, Tp, 128]: ids broadcast over lanes
  ids_row: jax.Array  # [B, 8, Tp]: ids broadcast over sublanes
  k_lo: jax.Array  # [B, nq]: query block i sees key blocks [lo, hi)
  k_hi: jax.Array
  q_lo: jax.Array  # [B, nk]: key block j is seen by query blocks [lo, hi)
  q_hi: jax.Array


jax.tree_util.register_dataclass(_Segments, data_fields=[f.name for f in dataclasses.fields(_Segments)], meta_fields=[])


# ----------------------------------------------------------------------------
# Which tiles are computed (shared by the kernels and the index maps).
# Block indices are non-negative, so lax.div (truncating) is floor division;
# unlike `//` it lowers without the TPU-generation query behind `sign`.
# ----------------------------------------------------------------------------
def _k_range(cfg: _Config, b, qi, lo_ref=None, hi_ref=None):
  """[lo, hi) key blocks that query block qi attends to (hi None: all)."""
  lo, hi = 0, None
  if cfg.causal:  # up to the block holding the block's last query
    hi = lax.div((qi + 1) * cfg.block_q - 1, cfg.block_k) + 1
  if cfg.packed:
    lo = lo_ref[b, qi]
    hi = hi_ref[b, qi] if hi is None else jnp.minimum(hi, hi_ref[b, qi])
  return lo, hi


def _q_range(cfg: _Config, b, kj, lo_ref=None, hi_ref=None):
  """[lo, hi) query blocks that attend to key block kj (hi None: all)."""
  lo, hi = 0, None
  if cfg.causal:  # from the block holding the block's first key
    lo = lax.div(kj * cfg.block_k, cfg.block_q)
  if cfg.packed:
    lo = jnp.maximum(lo, lo_ref[b, kj])
    hi = hi_ref[b, kj]
  return lo, hi


def _in_range(x, lo, hi):
  """lo <= x < hi, as a traced bool."""
  cond = x >= lo
  return cond if hi is None else jnp.logical_and(cond, x < hi)


def _clamp(x, lo, hi):
  """x clamped into [lo, hi): the block a skipped step reads."""
  x = jnp.maximum(x, lo)
  return x if hi is None else jnp.minimum(x, hi - 1)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------
def _dot(a, b, contract_b: int):
  """a @ b (contract_b=0) or a @ b.T (contract_b=1), fp32 accumulation."""
  return lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def _score_tile(x, y, slope, q_start, k_start, qseg, kseg, cfg: _Config, kv_len: Optional[int], *, q_rows: bool):
  """Masked fp32 scores ``x @ y.T * scale + slope * (k_pos - q_pos)``.

  q_rows: x holds queries and y keys (tile [bq, bk]); otherwise x holds keys
  and y queries (the transposed tile [bk, bq]).  qseg / kseg are None or
  segment ids already broadcastable against the tile.
  """
  shape = (x.shape[0], y.shape[0])
  q_axis, k_axis = (0, 1) if q_rows else (1, 0)
  qpos = q_start + lax.broadcasted_iota(jnp.int32, shape, q_axis)
  kpos = k_start + lax.broadcasted_iota(jnp.int32, shape, k_axis)
  s = _dot(x, y, 1) * cfg.sm_scale + slope * (kpos - qpos).astype(jnp.float32)
  masks = []
  if cfg.causal:
    masks.append(kpos <= qpos)
  if kv_len is not None:
    masks.append(kpos < kv_len)
  if qseg is not None:
    masks.append(qseg == kseg)
  if not masks:
    return s
  return jnp.where(functools.reduce(jnp.logical_and, masks), s, MASK_VALUE)


def _split_refs(refs, cfg: _Config, num_inputs: int):
  """Kernel refs -> (slopes, block ranges, inputs, segment refs, rest)."""
  slopes_ref, *refs = refs
  ranges = ()
  if cfg.packed:
    ranges, refs = tuple(refs[:2]), refs[2:]
  inputs, refs = refs[:num_inputs], refs[num_inputs:]
  segs = (None, None)
  if cfg.packed:
    segs, refs = tuple(refs[:2]), refs[2:]
  return slopes_ref, ranges, inputs, segs, refs


def _fwd_kernel(*refs, cfg: _Config, kv_len: Optional[int]):
  (slopes_ref, ranges, (q_ref, k_ref, v_ref), (qseg_ref, kseg_ref), (o_ref, lse_ref, m_sc, l_sc, acc_sc)) = _split_refs(
    refs, cfg, 3
  )
  b, h, qi, kj = (pl.program_id(a) for a in range(4))

  @pl.when(kj == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  @pl.when(_in_range(kj, *_k_range(cfg, b, qi, *ranges)))
  def _compute():
    s = _score_tile(
      q_ref[...],
      k_ref[...],
      slopes_ref[h],
      qi * cfg.block_q,
      kj * cfg.block_k,
      None if qseg_ref is None else qseg_ref[...][:, :1],
      None if kseg_ref is None else kseg_ref[...][:1, :],
      cfg,
      kv_len,
      q_rows=True,
    )
    m_prev = m_sc[...]  # [bq, 128]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_next)
    p = jnp.exp(s - m_next[:, :1])
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * alpha[:, :1] + _dot(p.astype(v.dtype), v, 0)
    m_sc[...] = m_next

  @pl.when(kj == pl.num_programs(3) - 1)
  def _finalize():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] / l[:, :1]).astype(o_ref.dtype)
    lse_ref[...] = m_sc[...] + jnp.log(l)


def _dq_kernel(*refs, cfg: _Config, kv_len: Optional[int]):
  (slopes_ref, ranges, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qseg_ref, kseg_ref), (dq_ref, dq_sc)) = (
    _split_refs(refs, cfg, 6)
  )
  b, h, qi, kj = (pl.program_id(a) for a in range(4))

  @pl.when(kj == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  @pl.when(_in_range(kj, *_k_range(cfg, b, qi, *ranges)))
  def _compute():
    k = k_ref[...]
    s = _score_tile(
      q_ref[...],
      k,
      slopes_ref[h],
      qi * cfg.block_q,
      kj * cfg.block_k,
      None if qseg_ref is None else qseg_ref[...][:, :1],
      None if kseg_ref is None else kseg_ref[...][:1, :],
      cfg,
      kv_len,
      q_rows=True,
    )
    p = jnp.exp(s - lse_ref[...][:, :1])  # [bq, bk]
    dp = _dot(do_ref[...], v_ref[...], 1)
    ds = p * (dp - delta_ref[...][:, :1])
    dq_sc[...] += _dot(ds.astype(k.dtype), k, 0)

  @pl.when(kj == pl.num_programs(3) - 1)
  def _finalize():
    dq_ref[...] = (dq_sc[...] * cfg.sm_scale).astype(dq_ref.dtype)


def _dkdv_kernel(*refs, cfg: _Config, kv_len: Optional[int]):
  (
    slopes_ref,
    ranges,
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref),
    (qseg_ref, kseg_ref),
    (dk_ref, dv_ref, dk_sc, dv_sc),
  ) = _split_refs(refs, cfg, 6)
  b, h, kj, qi = (pl.program_id(a) for a in range(4))

  @pl.when(qi == 0)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when(_in_range(qi, *_q_range(cfg, b, kj, *ranges)))
  def _compute():
    q = q_ref[...]
    do = do_ref[...]
    # Transposed tiles: rows are keys, columns are queries.
    st = _score_tile(
      k_ref[...],
      q,
      slopes_ref[h],
      qi * cfg.block_q,
      kj * cfg.block_k,
      None if qseg_ref is None else qseg_ref[...][:1, :],
      None if kseg_ref is None else kseg_ref[...][:, :1],
      cfg,
      kv_len,
      q_rows=False,
    )
    pt = jnp.exp(st - lse_ref[...][:1, :])  # [bk, bq]
    dv_sc[...] += _dot(pt.astype(do.dtype), do, 0)
    dpt = _dot(v_ref[...], do, 1)
    dst = pt * (dpt - delta_ref[...][:1, :])
    dk_sc[...] += _dot(dst.astype(q.dtype), q, 0)

  @pl.when(qi == pl.num_programs(3) - 1)
  def _finalize():
    dk_ref[...] = (dk_sc[...] * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


# ----------------------------------------------------------------------------
# pallas_call wrappers (inputs already in [B, H, Tp, Dp])
# ----------------------------------------------------------------------------
# Operand layouts: block shape from (block length, head_dim) and block index
# from (batch, head, sequence block index).
_LAYOUTS = {
  "seq": (lambda n, dp: (None, None, n, dp), lambda b, h, i: (b, h, i, 0)),
  "col": (lambda n, dp: (None, None, n, _LANES), lambda b, h, i: (b, h, i, 0)),
  "row": (lambda n, dp: (None, None, _SUBLANES, n), lambda b, h, i: (b, h, 0, i)),
  "seg_col": (lambda n, dp: (None, n, _LANES), lambda b, h, i: (b, i, 0)),
  "seg_row": (lambda n, dp: (None, _SUBLANES, n), lambda b, h, i: (b, 0, i)),
}


def _spec(layout: str, block: int, dp: int, seq_block):
  """BlockSpec of one operand; seq_block(*grid_idx, *prefetch_refs) gives
  the sequence block a grid step reads."""
  block_shape, index = _LAYOUTS[layout]
  return pl.BlockSpec(block_shape(block, dp), lambda b, h, *rest: index(b, h, seq_block(b, h, *rest)))


def _q_major_blocks(cfg: _Config):
  """(q block, k block) read by step (b, h, qi, kj) of the fwd / dq grids;
  skipped steps re-read the last computed key block (no new DMA)."""

  def q_block(b, h, qi, kj, *prefetch):
    return qi

  def k_block(b, h, qi, kj, slopes, *ranges):
    return _clamp(kj, *_k_range(cfg, b, qi, *ranges))

  return q_block, k_block


def _k_major_blocks(cfg: _Config):
  """(q block, k block) read by step (b, h, kj, qi) of the dk/dv grid;
  skipped steps read the first / last computed query block."""

  def q_block(b, h, kj, qi, slopes, *ranges):
    return _clamp(qi, *_q_range(cfg, b, kj, *ranges))

  def k_block(b, h, kj, qi, *prefetch):
    return kj

  return q_block, k_block


def _pallas(kernel, cfg: _Config, grid, prefetch, in_specs, out_specs, out_shape, scratch_shapes, name):
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=len(prefetch), grid=grid, in_specs=in_specs, out_specs=out_specs, scratch_shapes=scratch_shapes
  )
  call = pl.pallas_call(
    kernel,
    grid_spec=grid_spec,
    out_shape=out_shape,
    compiler_params=_CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
    interpret=pltpu.InterpretParams() if cfg.interpret else False,
    name=name,
  )
  return lambda *args: call(*prefetch, *args)


def _fwd_call(cfg: _Config, q, k, v, slopes, segs: Optional[_Segments]):
  bsz, nh, tp, dp = q.shape
  bq, bk = cfg.block_q, cfg.block_k
  qb, kb = _q_major_blocks(cfg)
  in_specs = [_spec("seq", bq, dp, qb), _spec("seq", bk, dp, kb), _spec("seq", bk, dp, kb)]
  args = [q, k, v]
  prefetch = [slopes]
  if segs is not None:
    in_specs += [_spec("seg_col", bq, dp, qb), _spec("seg_row", bk, dp, kb)]
    args += [segs.ids_col, segs.ids_row]
    prefetch += [segs.k_lo, segs.k_hi]
  return _pallas(
    functools.partial(_fwd_kernel, cfg=cfg, kv_len=cfg.kv_len(tp)),
    cfg,
    grid=(bsz, nh, tp // bq, tp // bk),
    prefetch=prefetch,
    in_specs=in_specs,
    out_specs=[_spec("seq", bq, dp, qb), _spec("col", bq, dp, qb)],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((bsz, nh, tp, _LANES), jnp.float32)],
    scratch_shapes=[
      pltpu.VMEM((bq, _LANES), jnp.float32),
      pltpu.VMEM((bq, _LANES), jnp.float32),
      pltpu.VMEM((bq, dp), jnp.float32),
    ],
    name="flash_alibi_tpu_fwd",
  )(*args)


def _dq_call(cfg: _Config, q, k, v, do, lse_col, delta_col, slopes, segs):
  bsz, nh, tp, dp = q.shape
  bq, bk = cfg.block_q, cfg.block_k
  qb, kb = _q_major_blocks(cfg)
  in_specs = [
    _spec("seq", bq, dp, qb),
    _spec("seq", bk, dp, kb),
    _spec("seq", bk, dp, kb),
    _spec("seq", bq, dp, qb),
    _spec("col", bq, dp, qb),
    _spec("col", bq, dp, qb),
  ]
  args = [q, k, v, do, lse_col, delta_col]
  prefetch = [slopes]
  if segs is not None:
    in_specs += [_spec("seg_col", bq, dp, qb), _spec("seg_row", bk, dp, kb)]
    args += [segs.ids_col, segs.ids_row]
    prefetch += [segs.k_lo, segs.k_hi]
  return _pallas(
    functools.partial(_dq_kernel, cfg=cfg, kv_len=cfg.kv_len(tp)),
    cfg,
    grid=(bsz, nh, tp // bq, tp // bk),
    prefetch=prefetch,
    in_specs=in_specs,
    out_specs=_spec("seq", bq, dp, qb),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    scratch_shapes=[pltpu.VMEM((bq, dp), jnp.float32)],
    name="flash_alibi_tpu_bwd_dq",
  )(*args)


def _dkdv_call(cfg: _Config, q, k, v, do, lse_row, delta_row, slopes, segs):
  bsz, nh, tp, dp = q.shape
  bq, bk = cfg.block_q, cfg.block_k
  qb, kb = _k_major_blocks(cfg)
  in_specs = [
    _spec("seq", bq, dp, qb),
    _spec("seq", bk, dp, kb),
    _spec("seq", bk, dp, kb),
    _spec("seq", bq, dp, qb),
    _spec("row", bq, dp, qb),
    _spec("row", bq, dp, qb),
  ]
  args = [q, k, v, do, lse_row, delta_row]
  prefetch = [slopes]
  if segs is not None:
    in_specs += [_spec("seg_row", bq, dp, qb), _spec("seg_col", bk, dp, kb)]
    args += [segs.ids_row, segs.ids_col]
    prefetch += [segs.q_lo, segs.q_hi]
  return _pallas(
    functools.partial(_dkdv_kernel, cfg=cfg, kv_len=cfg.kv_len(tp)),
    cfg,
    grid=(bsz, nh, tp // bk, tp // bq),
    prefetch=prefetch,
    in_specs=in_specs,
    out_specs=[_spec("seq", bk, dp, kb), _spec("seq", bk, dp, kb)],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    scratch_shapes=[pltpu.VMEM((bk, dp), jnp.float32), pltpu.VMEM((bk, dp), jnp.float32)],
    name="flash_alibi_tpu_bwd_dkdv",
  )(*args)


def _row_layouts(x):
  """[B, H, Tp] -> ([B, H, Tp, 128] lane-broadcast, [B, H, 8, Tp] sublane-)."""
  bsz, nh, tp = x.shape
  return (
    jnp.broadcast_to(x[..., None], (bsz, nh, tp, _LANES)),
    jnp.broadcast_to(x[:, :, None, :], (bsz, nh, _SUBLANES, tp)),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(cfg: _Config, q, k, v, slopes, segs):
  return _fwd_call(cfg, q, k, v, slopes, segs)[0]


def _attention_fwd(cfg, q, k, v, slopes, segs):
  o, lse = _fwd_call(cfg, q, k, v, slopes, segs)
  # Keep one lane of the lane-broadcast lse as the residual: [B, H, Tp].
  return o, (q, k, v, slopes, segs, o, lse[..., 0])


def _attention_bwd(cfg, res, do):
  q, k, v, slopes, segs, o, lse = res
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
  delta_col, delta_row = _row_layouts(delta)
  lse_col, lse_row = _row_layouts(lse)
  dq = _dq_call(cfg, q, k, v, do, lse_col, delta_col, slopes, segs)
  dk, dv = _dkdv_call(cfg, q, k, v, do, lse_row, delta_row, slopes, segs)
  # Slopes are constants; segment ids and block ranges are integers.
  return dq, dk, dv, jnp.zeros_like(slopes), jax.tree.map(lambda _: None, segs)


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------
# Front end
# ----------------------------------------------------------------------------
def _plan_blocks(t: int, block_q: int, block_k: int):
  """(block_q, block_k, padded_len)."""
  for name, blk in (("block_q", block_q), ("block_k", block_k)):
    if blk <= 0 or blk % _LANES:
      raise ValueError(f"{name}={blk} must be a positive multiple of {_LANES}")
  t8 = round_up(t, _SUBLANES)
  if t8 <= max(block_q, block_k):  # one tile spanning the whole sequence
    return t8, t8, t8
  return block_q, block_k, round_up(t, math.lcm(block_q, block_k))


def _make_segments(segment_ids, cfg: _Config, tp: int) -> _Segments:
  bsz, t = segment_ids.shape
  seg = segment_ids.astype(jnp.int32)
  # Padding gets an id of its own (only padded, dropped query rows see it as
  # their segment; real queries never reach padded keys, see _Config.kv_len).
  pad_id = jnp.min(seg) - 1
  seg = jnp.concatenate([seg, jnp.broadcast_to(pad_id, (bsz, tp - t))], 1)
  extent = segment_extent(seg)
  k_lo, k_hi = segment_block_ranges(extent, cfg.block_q, cfg.block_k)
  q_lo, q_hi = segment_block_ranges(extent, cfg.block_k, cfg.block_q)
  return _Segments(
    ids_col=jnp.broadcast_to(seg[:, :, None], (bsz, tp, _LANES)),
    ids_row=jnp.broadcast_to(seg[:, None, :], (bsz, _SUBLANES, tp)),
    k_lo=k_lo,
    k_hi=k_hi,
    q_lo=q_lo,
    q_hi=q_hi,
  )


def flash_alibi_tpu(
  q, k, v, *, slopes, segment_ids=None, causal=True, sm_scale=None, block_q=128, block_k=128, interpret=False
):
  """ALiBi flash attention on TPU (Pallas / Mosaic).  See the module doc.

  Args:
    q, k, v: ``[batch, seq, heads, head_dim]``, same shape and dtype
      (bfloat16 or float32).
    slopes: ``[heads]`` ALiBi slopes (constants: zero gradient).
    segment_ids: optional ``[batch, seq]`` int32 packing ids; no attention
      across different ids.
    causal: mask keys after the query position.
    sm_scale: score scale, default ``1/sqrt(head_dim)``.
    block_q, block_k: tile sizes, multiples of 128.
    interpret: run the kernels in Pallas' TPU interpret mode.

  Returns:
    ``[batch, seq, heads, head_dim]`` in q's dtype.
  """
  check_inputs(q, k, v, slopes, segment_ids, name="flash_alibi_tpu")
  if q.dtype not in (jnp.bfloat16, jnp.float32):
    raise NotImplementedError(f"flash_alibi_tpu supports bfloat16 / float32, got {q.dtype}")
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  _, t, _, d = q.shape
  bq, bk, tp = _plan_blocks(t, block_q, block_k)
  dp = d if d <= _LANES else round_up(d, _LANES)
  cfg = _Config(
    seq_len=t,
    block_q=bq,
    block_k=bk,
    sm_scale=resolve_sm_scale(sm_scale, d),
    causal=bool(causal),
    packed=segment_ids is not None,
    interpret=bool(interpret),
  )

  def to_kernel_layout(x):  # [B, T, H, D] -> [B, H, Tp, Dp]
    x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, dp - d)))
    return jnp.transpose(x, (0, 2, 1, 3))

  segs = None if segment_ids is None else _make_segments(segment_ids, cfg, tp)
  slopes = lax.stop_gradient(jnp.asarray(slopes, jnp.float32))
  out = _attention(cfg, to_kernel_layout(q), to_kernel_layout(k), to_kernel_layout(v), slopes, segs)
  return jnp.transpose(out, (0, 2, 1, 3))[:, :t, :, :d]
