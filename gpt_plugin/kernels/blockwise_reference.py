"""Blockwise (key-chunked) ALiBi attention in plain jnp: the reference and fallback of the fused kernels.

``flash_alibi_reference(q, k, v, *, slopes, segment_ids=None, causal=True, sm_scale=None, block_k=512)`` has the
semantics of ``flash_alibi.flash_alibi_attention``: a scan over key chunks with an fp32 online softmax, and a custom
VJP whose backward recomputes each chunk's scores, so memory is O(batch * heads * seq * block_k) both ways. It runs
on any backend; the front end uses it where no kernel can take the inputs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from gpt_plugin.kernels.common import MASK_VALUE, check_inputs, resolve_sm_scale, round_up

__all__ = ["flash_alibi_reference"]


@dataclasses.dataclass(frozen=True)
class _RefConfig:
  seq_len: int
  block_k: int
  causal: bool
  sm_scale: float


def _ref_chunks(cfg: _RefConfig, k, v, seg):
  """Pads keys to whole chunks: [n, B, H, blk, D] fp32 and [n, B, blk]."""
  bsz, t, nh, d = k.shape
  blk = cfg.block_k
  tp = round_up(t, blk)
  n = tp // blk

  def chunk(x):
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    return x.reshape(bsz, n, blk, nh, d).transpose(1, 0, 3, 2, 4)

  segc = None
  if seg is not None:
    segc = (
      jnp.pad(seg.astype(jnp.int32), ((0, 0), (0, tp - t)), constant_values=-1).reshape(bsz, n, blk).transpose(1, 0, 2)
    )
  return chunk(k), chunk(v), segc, n


def _ref_scores(cfg, qf, kj, j, slopes, seg, segj):
  """Scores [B, H, T, blk] (fp32) and keep-mask for key chunk j."""
  blk, t = cfg.block_k, cfg.seq_len
  qpos = jnp.arange(t, dtype=jnp.int32)[:, None]
  kpos = j * blk + jnp.arange(blk, dtype=jnp.int32)[None, :]
  s = jnp.einsum("bhqd,bhkd->bhqk", qf, kj, precision=lax.Precision.HIGHEST)
  s = s + slopes[None, :, None, None] * (kpos - qpos).astype(jnp.float32)
  mask = kpos < t
  if cfg.causal:
    mask = mask & (kpos <= qpos)
  mask = mask[None, None]
  if seg is not None:
    mask = mask & (seg[:, None, :, None] == segj[:, None, None, :])
  return s, mask


def _ref_forward(cfg, q, k, v, slopes, seg):
  bsz, t, nh, d = q.shape
  qf = jnp.swapaxes(q.astype(jnp.float32), 1, 2) * cfg.sm_scale  # [B,H,T,D]
  kc, vc, segc, n = _ref_chunks(cfg, k, v, seg)

  def step(carry, xs):
    m, l, acc = carry
    j, kj, vj = xs[:3]
    segj = xs[3] if seg is not None else None
    s, mask = _ref_scores(cfg, qf, kj, j, slopes, seg, segj)
    s = jnp.where(mask, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    alpha = jnp.exp(m - m_new)
    p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    l = l * alpha + jnp.sum(p, axis=-1)
    acc = acc * alpha[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p, vj, precision=lax.Precision.HIGHEST)
    return (m_new, l, acc), None

  init = (
    jnp.full((bsz, nh, t), MASK_VALUE, jnp.float32),
    jnp.zeros((bsz, nh, t), jnp.float32),
    jnp.zeros((bsz, nh, t, d), jnp.float32),
  )
  xs = (jnp.arange(n), kc, vc) + ((segc,) if seg is not None else ())
  (m, l, acc), _ = lax.scan(step, init, xs)
  l = jnp.maximum(l, 1e-30)  # rows with no visible key (impossible here)
  o = acc / l[..., None]
  lse = m + jnp.log(l)
  return jnp.swapaxes(o, 1, 2).astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ref_core(cfg, q, k, v, slopes, seg):
  return _ref_forward(cfg, q, k, v, slopes, seg)[0]


def _ref_core_fwd(cfg, q, k, v, slopes, seg):
  o, lse = _ref_forward(cfg, q, k, v, slopes, seg)
  return o, (q, k, v, slopes, seg, o, lse)


def _ref_core_bwd(cfg, res, do):
  q, k, v, slopes, seg, o, lse = res
  bsz, t, nh, d = q.shape
  qf = jnp.swapaxes(q.astype(jnp.float32), 1, 2) * cfg.sm_scale
  dof = jnp.swapaxes(do.astype(jnp.float32), 1, 2)
  delta = jnp.sum(jnp.swapaxes(o.astype(jnp.float32), 1, 2) * dof, axis=-1)
  kc, vc, segc, n = _ref_chunks(cfg, k, v, seg)
  hi = lax.Precision.HIGHEST

  def step(dq, xs):
    j, kj, vj = xs[:3]
    segj = xs[3] if seg is not None else None
    s, mask = _ref_scores(cfg, qf, kj, j, slopes, seg, segj)
    p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)
    dv = jnp.einsum("bhqk,bhqd->bhkd", p, dof, precision=hi)
    dp = jnp.einsum("bhqd,bhkd->bhqk", dof, vj, precision=hi)
    ds = p * (dp - delta[..., None])
    dk = jnp.einsum("bhqk,bhqd->bhkd", ds, qf, precision=hi)
    dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds, kj, precision=hi)
    return dq, (dk, dv)

  xs = (jnp.arange(n), kc, vc) + ((segc,) if seg is not None else ())
  dq, (dk, dv) = lax.scan(step, jnp.zeros((bsz, nh, t, d), jnp.float32), xs)

  def unchunk(x):  # [n, B, H, blk, D] -> [B, T, H, D]
    x = x.transpose(1, 0, 3, 2, 4).reshape(bsz, n * cfg.block_k, nh, d)
    return x[:, :t]

  dq = jnp.swapaxes(dq * cfg.sm_scale, 1, 2)
  return (dq.astype(q.dtype), unchunk(dk).astype(k.dtype), unchunk(dv).astype(v.dtype), jnp.zeros_like(slopes), None)


_ref_core.defvjp(_ref_core_fwd, _ref_core_bwd)


def flash_alibi_reference(q, k, v, *, slopes, segment_ids=None, causal=True, sm_scale=None, block_k=512):
  """Blockwise (key-chunked) ALiBi attention in plain jnp, fp32 math.

  Same semantics and signature style as :func:`flash_alibi_attention`;
  memory is O(batch * heads * seq * block_k) in forward *and* backward (custom
  VJP recomputing each chunk's scores), so it is usable for long sequences
  on any backend.
  """
  check_inputs(q, k, v, slopes, segment_ids, name="flash_alibi_attention")
  t = q.shape[1]
  cfg = _RefConfig(
    seq_len=t,
    block_k=max(1, min(int(block_k), t)),
    causal=bool(causal),
    sm_scale=resolve_sm_scale(sm_scale, q.shape[-1]),
  )
  slopes = lax.stop_gradient(jnp.asarray(slopes, jnp.float32))
  return _ref_core(cfg, q, k, v, slopes, segment_ids)
