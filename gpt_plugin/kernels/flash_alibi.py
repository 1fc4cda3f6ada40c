"""Fused ALiBi flash attention (Pallas), with no materialised T x T bias.

Public entry points
-------------------
``flash_alibi_attention(q, k, v, *, slopes, segment_ids=None, causal=True,
sm_scale=None, block_q=None, block_k=None, interpret=None, ...)``
    q, k, v: ``[batch, seq, heads, head_dim]`` (bf16/f16/f32), ``slopes``: ``[heads]``.
    Score of query position i and key position j in head h::

        s = (q_i . k_j) * sm_scale + slopes[h] * (j - i)

    computed in fp32 inside the kernel tile, then causal (``j <= i``) and
    segment (``segment_ids[i] == segment_ids[j]``) masking and an fp32 online
    softmax.  Returns ``[batch, seq, heads, head_dim]`` in q's dtype.
    Differentiable through ``jax.custom_vjp``: the forward saves the row
    log-sum-exp, the backward runs two Pallas kernels (dq; dk+dv) that
    recompute the scores (no bias read, no bias gradient).  ``slopes`` and
    ``segment_ids`` are constants for differentiation (zero / no cotangent).

``flash_alibi_reference(q, k, v, *, slopes, ...)``
    Pure-jnp blockwise implementation (``blockwise_reference.py``; scan over
    key chunks, custom VJP with a blockwise backward), memory
    O(batch*heads*seq*block_k); runs anywhere and is the fallback on CPU with
    ``interpret=False``.

``alibi_slopes(num_heads)``
    The ALiBi slope rule (``gpt_plugin.layers.alibi``), for benchmarks/tests.

This module is the public entry point and the backend choice only; the
kernels live in ``triton_alibi.py`` (GPU / CPU interpret; also
``flash_alibi_block_counts`` and the launch defaults, re-exported here) and
``flash_alibi_tpu.py`` (TPU), the reference in ``blockwise_reference.py``.

Backends (``implementation=None`` picks one):
  * GPU: Pallas Triton kernels (``pl.pallas_call`` + ``plgpu.CompilerParams``).
  * CPU: the same kernels with ``interpret=True`` (the default there);
    ``interpret=False`` on CPU warns and uses ``flash_alibi_reference``.
  * TPU: ``gpt_plugin.kernels.flash_alibi_tpu`` (Pallas Mosaic kernels with
    the same in-tile ALiBi, causal and packed-segment block skipping).
  Inputs the chosen kernel cannot take (head_dim > 256 or an unsupported
  dtype) warn once and use ``flash_alibi_reference``; an explicit
  ``implementation=`` raises instead.

Causal block skipping: the forward and dq kernels loop only over key blocks
``<= `` the diagonal block of their query block, the dk/dv kernel only over
query blocks ``>=`` the diagonal; fully masked blocks are never loaded.  Blocks
entirely below the diagonal skip the causal mask arithmetic as well.
Packed (``segment_ids``): each kernel program also skips the blocks of the
other axis that hold none of its segments (per-block ``[lo, hi)`` ranges from
each segment's first and last position, valid for any id layout), so a batch
of short documents costs about ``sum(doc_len**2)``, not ``T**2``.

Sequence lengths that are not a multiple of the block sizes are padded
internally; padded keys are masked (non-causal) or unreachable (causal), padded
query rows are dropped.  head_dim is zero-padded to the next power of two
(>= 16) because Triton tiles need power-of-two shapes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gpt_plugin.kernels.blockwise_reference import flash_alibi_reference
from gpt_plugin.kernels.common import WARNED_KEYS as _WARNED  # noqa: F401  (tests reset it)
from gpt_plugin.kernels.common import check_inputs, warn_once
from gpt_plugin.kernels.triton_alibi import (
  GPU_MAX_HEAD_DIM,
  SUPPORTED_DTYPES,
  default_num_stages,
  default_num_warps,
  default_tiles,
  flash_alibi_block_counts,
  plgpu,  # noqa: F401  (None where jaxlib has no Pallas Triton backend)
  triton_alibi_attention,
)
from gpt_plugin.layers.alibi import alibi_slopes

__all__ = [
  "alibi_slopes",
  "flash_alibi_attention",
  "flash_alibi_reference",
  "flash_alibi_block_counts",
  "default_tiles",
  "default_num_warps",
  "default_num_stages",
]


def _unsupported_by(impl: str, q, interpret: bool) -> Optional[str]:
  """Why the automatically chosen kernel cannot take these inputs, or None."""
  if impl == "triton" and not interpret:
    if q.dtype not in SUPPORTED_DTYPES:
      return f"the Triton kernel takes bf16/f16/f32, not {q.dtype}"
    if q.shape[-1] > GPU_MAX_HEAD_DIM:
      return f"the Triton kernel's tiles hold head_dim <= {GPU_MAX_HEAD_DIM}, not {q.shape[-1]}"
  if impl == "tpu" and q.dtype not in (jnp.bfloat16, jnp.float32):
    return f"the TPU kernel takes bf16/f32, not {q.dtype}"
  return None


def _choose_backend(q, interpret):
  """The automatic choice: (implementation, interpret) for these inputs on this backend. Falls back to the
  blockwise reference, with one warning, where the chosen kernel cannot run or cannot take the inputs."""
  platform = jax.default_backend()
  if interpret:
    impl = "triton"
  elif platform == "gpu":
    impl, interpret = "triton", False
  elif platform == "tpu":
    impl = "tpu"
  elif interpret is None:
    impl, interpret = "triton", True
  else:
    warn_once(
      f"no_triton_{platform}",
      f"flash_alibi_attention: interpret=False on backend '{platform}' "
      "cannot compile the Triton kernel; using the blockwise jnp "
      "reference (flash_alibi_reference) instead.",
    )
    impl = "reference"
  reason = _unsupported_by(impl, q, bool(interpret))
  if reason:
    warn_once(
      f"unsupported_{impl}_{q.dtype}_{q.shape[-1]}",
      f"flash_alibi_attention: {reason}; using the blockwise jnp reference (flash_alibi_reference) "
      "instead (pass implementation= to make this an error).",
    )
    impl = "reference"
  return impl, interpret


def flash_alibi_attention(
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
  interpret=None,
  implementation=None,
  bwd_block_q=None,
  bwd_block_k=None,
  num_warps=None,
  num_stages=None,
):
  """Fused causal/packed ALiBi attention.  See the module docstring.

  Args:
    q, k, v: ``[batch, seq, heads, head_dim]``, same shape and dtype.
    slopes: ``[heads]`` ALiBi slopes (treated as constants).
    segment_ids: optional ``[batch, seq]`` int packing ids; no attention
      across different ids.
    causal: mask keys after the query position.
    sm_scale: score scale, default ``1/sqrt(head_dim)``.
    block_q, block_k: forward tile sizes (powers of two >= 16 on GPU);
      default ``default_tiles(head_dim)``.
    interpret: run the Pallas kernels in interpret mode.  ``None`` -> True
      unless the default backend is GPU (or TPU, which uses the TPU path).
    implementation: ``None`` (auto), ``'triton'`` (Pallas kernels; compiled
      unless ``interpret``), ``'tpu'``, or ``'reference'`` (blockwise jnp).
    bwd_block_q, bwd_block_k: backward tiles (default: the head_dim's default
      backward tile, capped at the forward tile).
    num_warps: Triton warps for all three kernels (default
      ``default_num_warps`` per kernel); num_stages: software pipelining
      depth (default ``default_num_stages(head_dim)``).  GPU only.

  Returns:
    ``[batch, seq, heads, head_dim]`` in q's dtype.
  """
  check_inputs(q, k, v, slopes, segment_ids, name="flash_alibi_attention")
  if k.dtype != q.dtype or v.dtype != q.dtype:
    k, v = k.astype(q.dtype), v.astype(q.dtype)
  impl = implementation
  if impl is None:
    impl, interpret = _choose_backend(q, interpret)
  if impl == "reference":
    return flash_alibi_reference(
      q,
      k,
      v,
      slopes=slopes,
      segment_ids=segment_ids,
      causal=causal,
      sm_scale=sm_scale,
      block_k=max(block_k or 128, 128),
    )
  if impl == "tpu":
    return _tpu_flash(q, k, v, slopes=slopes, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale)
  if impl != "triton":
    raise ValueError(f"unknown implementation {implementation!r}")
  return triton_alibi_attention(
    q,
    k,
    v,
    slopes=slopes,
    segment_ids=segment_ids,
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


def _tpu_flash(q, k, v, *, slopes, segment_ids, causal, sm_scale):
  from gpt_plugin.kernels.flash_alibi_tpu import flash_alibi_tpu  # pylint: disable=import-outside-toplevel

  return flash_alibi_tpu(q, k, v, slopes=slopes, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale)
