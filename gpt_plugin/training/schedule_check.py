"""The learning-rate schedule a checkpoint was trained with, stored in its metadata, and the warning when a resumed
run would follow another one (raising TRAIN_STEPS stretches the default cosine schedule: DECAY_STEPS follows
TRAIN_STEPS unless it is set)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional


def _probe_steps(step: int, total_steps: int) -> List[int]:
  return sorted({step + 1, max(step + 1, (step + total_steps) // 2), max(step + 1, total_steps)})


def schedule_record(learning_rate_fn: Callable[[Any], Any], step: int, total_steps: int) -> Dict[str, Any]:
  """What goes into the checkpoint metadata at `step`: TRAIN_STEPS and the LR at a few of the following steps."""
  lrs = {str(s): float(learning_rate_fn(s)) for s in _probe_steps(step, total_steps)}
  return {"total_steps": int(total_steps), "learning_rate_at": lrs}


def schedule_change_warning(
  stored: Optional[Dict[str, Any]], learning_rate_fn: Callable[[Any], Any], step: int, total_steps: int
) -> Optional[str]:
  """A warning when the LR the schedule gives now differs from the stored one at any probed step; else None."""
  if not stored or not isinstance(stored.get("learning_rate_at"), dict):
    return None
  changed = []
  for s, old in sorted(stored["learning_rate_at"].items(), key=lambda kv: int(kv[0])):
    new = float(learning_rate_fn(int(s)))
    if abs(new - float(old)) > 1e-6 * max(abs(float(old)), abs(new), 1e-12):
      changed.append(f"step {s}: {float(old):.3g} -> {new:.3g}")
  if not changed:
    return None
  old_total = stored.get("total_steps")
  return (
    f"the learning-rate schedule differs from the one checkpoint_{step} was trained with (TRAIN_STEPS={old_total}, "
    f"now {total_steps}): learning rate at {'; '.join(changed)}. The run gins decay over DECAY_STEPS, which "
    f"follows TRAIN_STEPS unless set (gin/runs/pretrain.gin): to keep the old schedule, set DECAY_STEPS to the "
    f"value it was trained with (--gin.DECAY_STEPS={old_total} if it followed TRAIN_STEPS)"
  )
