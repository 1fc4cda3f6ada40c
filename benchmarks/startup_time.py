"""Start-up time of `python -m gpt_plugin.<runner> --help`, per runner (goal: under 2 s, nothing heavy imported).

  python benchmarks/startup_time.py [--reps 5] [--baseline_root /path/to/other/checkout]

Prints, per runner, the median wall time of `--help` over `--reps` runs, its exit status, and which heavy packages
(jax, flax, tensorflow, seqio, torch) the help path imported (from `python -X importtime`). The reference in the
same run is `python -c "import jax, flax, seqio"`, what a runner used to pay before it could print anything; with
`--baseline_root` the same runners from another checkout (e.g. the commit before this change) are timed too,
interleaved, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from gpt_plugin.cli import RUNNER_MODULES  # noqa: E402  (imports nothing heavy)

HEAVY = ("jax", "flax", "tensorflow", "seqio", "torch")


def _env(root: str) -> dict:
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  env.pop("GPT_PLUGIN_VERBOSE", None)
  return env


def _time(cmd, root: str):
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
  return time.perf_counter() - t0, r.returncode


def _heavy_imports(runner: str, root: str) -> str:
  r = subprocess.run(
    [sys.executable, "-X", "importtime", "-m", runner, "--help"],
    cwd=root,
    env=_env(root),
    capture_output=True,
    text=True,
  )
  seen = set()
  for line in r.stderr.splitlines():
    if line.startswith("import time:") and "|" in line:
      name = line.rsplit("|", 1)[1].strip()
      if name.split(".")[0] in HEAVY:
        seen.add(name.split(".")[0])
  return ",".join(sorted(seen)) or "none"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--baseline_root", default=None, help="another checkout to time the same runners from")
  args = ap.parse_args()
  print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, median of {args.reps} runs", flush=True)
  ref = [_time([sys.executable, "-c", "import jax, flax, seqio"], ROOT)[0] for _ in range(args.reps)]
  ref_s = statistics.median(ref)
  print(f"reference: python -c 'import jax, flax, seqio'  {ref_s:.2f} s", flush=True)
  header = f"{'runner':<30} {'--help':>8} {'rc':>3} {'vs ref':>7}  heavy imports"
  if args.baseline_root:
    header += f"   {'baseline':>8} {'rc':>3} {'speed-up':>8}"
  print(header)
  for runner in RUNNER_MODULES:
    cmd = [sys.executable, "-m", runner, "--help"]
    ours, base, rcs, base_rcs = [], [], set(), set()
    for _ in range(args.reps):  # interleaved with the baseline, so both see the same machine load
      t, rc = _time(cmd, ROOT)
      ours.append(t)
      rcs.add(rc)
      if args.baseline_root:
        t, rc = _time(cmd, args.baseline_root)
        base.append(t)
        base_rcs.add(rc)
    ours_s = statistics.median(ours)
    line = f"{runner:<30} {ours_s:>7.2f}s {max(rcs):>3} {ref_s / ours_s:>6.1f}x  {_heavy_imports(runner, ROOT):<14}"
    if args.baseline_root:
      base_s = statistics.median(base)
      line += f" {base_s:>7.2f}s {max(base_rcs):>3} {base_s / ours_s:>7.1f}x"
    print(line, flush=True)


if __name__ == "__main__":
  main()
