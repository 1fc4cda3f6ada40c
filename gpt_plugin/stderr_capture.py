"""Capturing what native code (TensorFlow, TensorStore, orbax's threads) writes to the process's stderr, at the
file-descriptor level, so that a caller can decide afterwards whether the person at the terminal sees it."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator, List


@contextlib.contextmanager
def captured_stderr() -> Iterator[List[str]]:
  """Redirects fd 2 for the block; the yielded list receives the captured text (one string) when the block ends."""
  out: List[str] = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.append(tmp.read().decode(errors="replace"))
