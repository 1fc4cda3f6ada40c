"""Decode-cache variables of modules that sit outside the scanned layer stack (learned positions, head-QK).

With `scan_layers`, every cache leaf of the layer stack has the layer axis first and the batch at axis 1, and the
decode functions (ours and T5X's) expand or reorder the batch of every leaf at that one `cache_offset`. A cache
variable outside the stack therefore gets a leading axis of size 1 under scan, so that its batch sits at axis 1
too; the module reads and writes it without that axis."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn


class _WithLayerAxis:
  """A flax variable stored as [1, ...] and seen as [...]."""

  def __init__(self, variable):
    self._variable = variable

  @property
  def value(self):
    return self._variable.value[0]

  @value.setter
  def value(self, new):
    self._variable.value = new[None]


def cache_variable(module: nn.Module, name: str, init_fn: Callable[..., Any], *init_args, layer_axis: bool) -> Any:
  """`module.variable("cache", name, init_fn, *init_args)`, stored with a leading axis of 1 when `layer_axis`."""
  if not layer_axis:
    return module.variable("cache", name, init_fn, *init_args)
  return _WithLayerAxis(module.variable("cache", name, lambda *a: init_fn(*a)[None], *init_args))
