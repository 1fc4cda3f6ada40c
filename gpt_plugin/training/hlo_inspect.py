"""Reading compiled HLO text: which collectives sit inside `while` loop bodies, and over which devices.

Used by the tests (single gradient reduction per step) and by benchmarks/train_throughput.py. Device ids in
replica groups are positions in the executable's device assignment (the mesh's devices in row-major order).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
_COMP_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_CALL_RE = re.compile(
  r"(?:calls|to_apply|body|condition|branch_computations|called_computations)="
  r"(\{[^}]*\}|%?[\w.\-]+)"
)
_OP_RE = re.compile(r"[\s)\]}](" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


@dataclasses.dataclass
class Collective:
  op: str
  computation: str
  in_loop: bool
  groups: Optional[List[List[int]]]  # None when the replica-group format was not understood
  line: str


def _parse_computations(txt: str):
  comps: Dict[str, List[str]] = {}
  cur = None
  for line in txt.splitlines():
    m = _COMP_RE.match(line)
    if m:
      cur = m.group(2)
      comps[cur] = []
      continue
    if cur is not None:
      if line.strip() == "}":
        cur = None
      else:
        comps[cur].append(line)
  return comps


def _callees(lines: Sequence[str]) -> Set[str]:
  out = set()
  for l in lines:
    for m in _CALL_RE.finditer(l):
      for n in m.group(1).strip("{}").split(","):
        n = n.strip().lstrip("%")
        if n:
          out.add(n)
  return out


def _iota(dims: Sequence[int], perm: Optional[Sequence[int]]) -> np.ndarray:
  a = np.arange(int(np.prod(dims))).reshape(dims)
  return a.transpose(perm) if perm else a


def _parse_dims_perm(s: str):
  m = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", s.strip())
  if not m:
    return None
  dims = [int(x) for x in m.group(1).split(",")]
  perm = [int(x) for x in m.group(2).split(",")] if m.group(2) else None
  return dims, perm


def parse_replica_groups(line: str) -> Optional[List[List[int]]]:
  """Replica groups of one collective instruction (explicit, iota `[a,b]<=[n]T(..)` or mesh-axes format)."""
  m = re.search(r"replica_groups=\{(\{[\d,\s]*\}(?:,\s*\{[\d,\s]*\})*)\}", line)
  if m:
    return [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]
  m = re.search(r"replica_groups=\[([\d,]+)\]<=(\[[\d,]+\](?:T\([\d,]+\))?)", line)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    parsed = _parse_dims_perm(m.group(2))
    if parsed is None:
      return None
    return _iota(*parsed).reshape(shape).tolist()
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(([^)]*\)?)\))?\s*\{([^}]*)\}", line)
  if m:
    axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    if m.group(2):
      parsed = _parse_dims_perm(m.group(2))
      if parsed is None:
        return None
      ids = _iota(*parsed).reshape(sizes)
    else:
      ids = np.arange(int(np.prod(sizes))).reshape(sizes)
    chosen = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(3))]
    others = [i for i in range(len(names)) if i not in chosen]
    moved = ids.transpose(others + chosen).reshape(-1, int(np.prod([sizes[i] for i in chosen] or [1])))
    return moved.tolist()
  return None


def collectives(hlo_text: str) -> List[Collective]:
  comps = _parse_computations(hlo_text)
  bodies = set()
  for lines in comps.values():
    for l in lines:
      if re.search(r"\swhile\(", l):
        b = re.search(r"body=%?([\w.\-]+)", l)
        if b:
          bodies.add(b.group(1))
  in_loop: Set[str] = set()
  stack = list(bodies)
  while stack:
    n = stack.pop()
    if n in in_loop or n not in comps:
      continue
    in_loop.add(n)
    stack.extend(_callees(comps[n]))
  out = []
  for name, lines in comps.items():
    for l in lines:
      m = _OP_RE.search(l)
      if m and "=" in l[: m.start()]:
        out.append(Collective(m.group(1), name, name in in_loop, parse_replica_groups(l), l.strip()))
  return out


def crosses(groups: Optional[List[List[int]]], coord_of: Dict[int, tuple]) -> bool:
  """True when some group joins devices with different coordinates (unknown groups count as crossing)."""
  if groups is None:
    return True
  return any(len({coord_of[d] for d in g}) > 1 for g in groups if g)


def batch_axis_reductions(hlo_text: str, mesh, batch_axes: Sequence[str] = ("data", "fsdp")) -> Dict[str, int]:
  """Counts all-reduce / reduce-scatter ops that reduce across the batch mesh axes (i.e. gradient reductions,
  not tensor-parallel activation all-reduces), split into {'in_loop': n, 'outside': m}."""
  names = list(mesh.axis_names)
  idx = [names.index(a) for a in batch_axes if a in names]
  shape = [mesh.shape[a] for a in names]
  coord_of = {}
  for pos, coord in enumerate(itertools.product(*[range(s) for s in shape])):
    coord_of[pos] = tuple(coord[i] for i in idx)
  counts = collections.Counter({"in_loop": 0, "outside": 0})
  for c in collectives(hlo_text):
    if c.op in ("all-reduce", "reduce-scatter") and crosses(c.groups, coord_of):
      counts["in_loop" if c.in_loop else "outside"] += 1
  return dict(counts)
