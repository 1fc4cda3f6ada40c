"""Capturing what native code (TensorFlow, TensorStore, orbax's threads) writes to the process's stderr, at the
file-descriptor level, so that a caller can decide afterwards whether the person at the terminal sees it."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Iterator, List


class CapturedText(List[str]):
  """Receives the captured text (one string) when the block ends; `wait_until_quiet` may be called inside it."""

  def __init__(self, file):
    super().__init__()
    self._file = file

  def wait_until_quiet(self, quiet_s: float = 0.3, max_s: float = 5.0) -> None:
    """Blocks until nothing has been written for `quiet_s` seconds (at most `max_s`), so that output which
    background threads are still printing lands inside the capture rather than after it."""
    deadline = time.monotonic() + max_s
    size, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
      now_size = os.fstat(self._file.fileno()).st_size
      if now_size != size:
        size, still_since = now_size, time.monotonic()
      elif time.monotonic() - still_since >= quiet_s:
        return
      time.sleep(0.05)


@contextlib.contextmanager
def captured_stderr() -> Iterator[CapturedText]:
  """Redirects fd 2 for the block; the yielded list receives the captured text (one string) when the block ends."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    out = CapturedText(tmp)
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.append(tmp.read().decode(errors="replace"))
