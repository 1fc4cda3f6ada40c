"""The training loop behind `python -m gpt_plugin.train` (gin binds `train_lib.train`, see gin/runs/*.gin)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
import numpy as np

from gpt_plugin import params_io
from gpt_plugin import partitioning
from gpt_plugin.training import checkpointing
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import optimizer as optimizer_lib
from gpt_plugin.training import train_step as train_step_lib


class NonFiniteLossError(RuntimeError):
  """Raised after `max_consecutive_bad_steps` non-finite steps in a row."""


class InitParamsMismatchError(params_io.ParamsMismatchError):
  """`init_params_from` holds params whose names or shapes differ from the model's."""


def load_init_params(path: str, abstract_params: Any, params_shardings: Any) -> Any:
  """Params for a warm start: read with `gpt_plugin.params_io.load_params` (a `convert` / `export_params` output
  directory, its `params/` folder, a `.msgpack` file, a MODEL_DIR or one `checkpoint_<step>`), checked name by
  name and shape by shape against the model, cast to the model's param dtypes and placed on `params_shardings`
  (each process reads the file and keeps its own shards)."""
  loaded, where = params_io.load_params(path)
  params_io.check_params_against(
    abstract_params,
    loaded,
    what=f"init_params_from={path} ({where})",
    error=InitParamsMismatchError,
    hint="use the model gin the params were trained with, or convert them first (python -m gpt_plugin.convert)",
  )
  by_name = {n: a for n, a in _named_leaves(loaded)}
  names = [n for n, _ in _named_leaves(abstract_params)]
  treedef = jax.tree.structure(abstract_params)
  out = []
  for name, a, sh in zip(names, jax.tree.leaves(abstract_params), jax.tree.leaves(params_shardings)):
    arr = np.asarray(by_name[name]).astype(a.dtype)
    out.append(jax.make_array_from_callback(a.shape, sh, lambda idx, arr=arr: arr[idx]))
  return jax.tree.unflatten(treedef, out)


def _named_leaves(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [
    ("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path), leaf)
    for path, leaf in flat
  ]


@dataclasses.dataclass
class DatasetConfig:
  """Like T5X's utils.DatasetConfig. `batch_size` is GLOBAL (all processes together)."""

  mixture_or_task_name: Optional[str] = None
  task_feature_lengths: Optional[Mapping[str, int]] = None
  split: str = "train"
  batch_size: int = 8
  shuffle: bool = True
  seed: Optional[int] = 0
  pack: bool = True
  use_cached: bool = False
  num_epochs: Optional[int] = None
  module: Optional[str] = None  # deprecated T5X field; import task modules in gin instead


def default_dataset_fn(mixture_or_task_name, task_feature_lengths, split, batch_size, **kwargs):
  from gpt_plugin.data import pipeline  # pylint: disable=g-import-not-at-top

  return pipeline.get_dataset(mixture_or_task_name, task_feature_lengths, split, batch_size, **kwargs)


def _make_iterator(dataset_fn, cfg: DatasetConfig, model, state=None, shuffle=None, num_epochs=None):
  if cfg.batch_size % jax.process_count():
    raise ValueError(f"global batch size {cfg.batch_size} not divisible by {jax.process_count()} processes")
  if cfg.mixture_or_task_name is None or cfg.task_feature_lengths is None:
    raise ValueError("dataset config needs MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS")
  kwargs = {}
  converter = getattr(model, "FEATURE_CONVERTER_CLS", None)
  if converter is not None:
    kwargs["feature_converter_cls"] = converter
  return dataset_fn(
    cfg.mixture_or_task_name,
    dict(cfg.task_feature_lengths),
    cfg.split,
    cfg.batch_size // jax.process_count(),
    shuffle=cfg.shuffle if shuffle is None else shuffle,
    seed=cfg.seed if cfg.seed is not None else 0,
    pack=cfg.pack,
    use_cached=cfg.use_cached,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_epochs=cfg.num_epochs if num_epochs is None else num_epochs,
    state=state,
    **kwargs,
  )


def reshape_for_context(batch: Mapping[str, np.ndarray], context: Optional[int]) -> Dict[str, np.ndarray]:
  """Staged sequence-length warmup (the original's HEAD option): split each [b, L] row into L/context rows of
  length `context`; tokens per step stay the same. Packed positions are rebased per new row."""
  if not context:
    return dict(batch)
  out = {}
  for k, v in batch.items():
    b, length = v.shape[:2]
    if length <= context:
      return dict(batch)
    if length % context:
      raise ValueError(f"warmup_train_context {context} must divide the sequence length {length}")
    v = v.reshape((b * (length // context), context) + v.shape[2:])
    if k == "decoder_positions":
      v = v - v.min(axis=1, keepdims=True)
    out[k] = v
  return out


def _to_global(batch: Mapping[str, np.ndarray], partitioner: partitioning.Partitioner) -> Dict[str, jax.Array]:
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    sharding = partitioner.batch_sharding(v.ndim)
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out


def _input_shapes(cfg: DatasetConfig) -> Dict[str, tuple]:
  length = sum(int(v) for v in dict(cfg.task_feature_lengths).values())
  return {"decoder_input_tokens": (1, length), "decoder_target_tokens": (1, length)}


_MACRO_FOR = {
  "model": "MODEL",
  "model_dir": "MODEL_DIR",
  "total_steps": "TRAIN_STEPS",
  "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
  "task_feature_lengths": "TASK_FEATURE_LENGTHS",
  "batch_size": "BATCH_SIZE",
}


def _check_required(**values):
  missing = [k for k, v in values.items() if v is gin.REQUIRED or (v is None and k != "batch_size")]
  if missing:
    names = ", ".join(f"{_MACRO_FOR.get(k, k)} (train_lib.train {k})" for k in missing)
    raise ValueError(
      f"missing required gin macro(s): {names}. Set them in a gin file or on the command line, "
      f"e.g. --gin.MODEL_DIR=\\\"/tmp/run\\\" (MODEL comes from a model gin such as models/small.gin)."
    )


def train(
  *,
  model: Any,
  model_dir: str,
  train_dataset_cfg: DatasetConfig,
  total_steps: int,
  train_eval_dataset_cfg: Optional[DatasetConfig] = None,
  optimizer_fn: Callable[..., Any] = optimizer_lib.adamw,
  learning_rate_fn: Optional[Callable[[Any], Any]] = None,
  num_microbatches: int = 1,
  single_gradient_reduction: bool = True,
  random_seed: int = 0,
  mesh_fn: Callable[[], Any] = partitioning.create_mesh,
  logical_axis_rules: Optional[Sequence] = None,
  checkpoint_period: int = 1000,
  keep_checkpoints: Optional[int] = 3,
  async_checkpointing: bool = True,
  resume: bool = True,
  eval_period: int = 1000,
  eval_steps: int = 20,
  log_period: int = 10,
  max_consecutive_bad_steps: int = 10,
  dynamic_loss_scale: bool = False,
  initial_loss_scale: float = 2.0**15,
  loss_scale_growth_interval: int = 2000,
  staged_warmup_steps: int = 0,
  warmup_train_context: Optional[int] = None,
  peak_flops_per_device: Optional[float] = None,
  dataset_fn: Optional[Callable[..., Any]] = None,
  export_params_at_end: bool = False,
  init_params_from: Optional[str] = None,
  sample_prompts: Optional[Sequence[str]] = None,
  sample_length: int = 48,
  sample_temperature: float = 0.0,
  sample_top_k: int = 0,
  sample_seed: int = 0,
  write_summaries: bool = True,
  stop_at_step: Optional[int] = None,
  console: bool = True,
) -> Dict[str, Any]:
  """Trains `model` for `total_steps` steps (resuming from the latest checkpoint in `model_dir`).

  `stop_at_step` ends this invocation early (checkpointing there) without changing the schedule.
  `init_params_from` (warm start): when `model_dir` has no checkpoint yet, the params come from this params-only
  checkpoint (`python -m gpt_plugin.convert` / `checkpointing.export_params` output, see `load_init_params`)
  instead of the random init; optimiser state, step and data start fresh. Ignored once `model_dir` holds a
  checkpoint (resuming wins).
  `sample_prompts`: at the end, continue each prompt by `sample_length` tokens from the final params with
  `gpt_plugin.generate` (greedy when `sample_temperature` is 0, else temperature sampling, top-k when
  `sample_top_k` > 0, seeded by `sample_seed`) through the model's vocabulary, and print prompt + continuation (result key 'samples').
  Returns {'state', 'history' (per-step dicts of floats), 'evals', 'step'}.
  """
  t_start = time.time()
  _check_required(
    model=model,
    model_dir=model_dir,
    total_steps=total_steps,
    mixture_or_task_name=train_dataset_cfg.mixture_or_task_name,
    task_feature_lengths=train_dataset_cfg.task_feature_lengths,
    batch_size=train_dataset_cfg.batch_size,
  )
  if train_eval_dataset_cfg is not None and (
    train_eval_dataset_cfg.mixture_or_task_name is gin.REQUIRED
    or train_eval_dataset_cfg.task_feature_lengths is gin.REQUIRED
  ):
    train_eval_dataset_cfg = None
  dataset_fn = dataset_fn or default_dataset_fn
  if learning_rate_fn is None:
    learning_rate_fn = optimizer_lib.warmup_cosine_schedule(
      decay_steps=total_steps, warmup_steps=min(1000, max(total_steps // 10, 1))
    )
  tx = optimizer_fn(learning_rate=learning_rate_fn)
  rules = tuple(logical_axis_rules) if logical_axis_rules is not None else partitioning.logical_axis_rules()
  mesh = mesh_fn()
  partitioner = partitioning.Partitioner(mesh, rules)
  dp = partitioner.data_parallel_size
  if train_dataset_cfg.batch_size % (dp * max(num_microbatches, 1)) and num_microbatches > 1:
    raise ValueError(
      f"batch size {train_dataset_cfg.batch_size} must be divisible by data-parallel size {dp} x "
      f"num_microbatches {num_microbatches}"
    )
  logging.info("mesh %s, rules %s", dict(mesh.shape), rules)

  # ---- abstract state and shardings (no device memory touched yet) ----
  key = jax.random.key(random_seed)
  init_key, train_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  input_shapes = _input_shapes(train_dataset_cfg)
  input_types = {k: jnp.int32 for k in input_shapes}
  with partitioner.context():
    abstract_vars = jax.eval_shape(lambda k: model.get_initial_variables(k, input_shapes, input_types), init_key)
  abstract_params = abstract_vars["params"]
  logical_specs = partitioning.params_logical_specs(abstract_vars, abstract_params)
  params_sh = partitioner.logical_to_mesh(logical_specs)

  def init_state(k_init, k_train):
    variables = model.get_initial_variables(k_init, input_shapes, input_types)
    return train_step_lib.create_train_state(
      variables["params"], tx, k_train, initial_loss_scale if dynamic_loss_scale else 1.0
    )

  abstract_state = jax.eval_shape(init_state, init_key, train_key)
  state_sh = train_step_lib.state_shardings(abstract_state, params_sh, tx, partitioner.replicated)
  params_info = checkpointing.params_shape_info(abstract_state.params)
  num_params = metrics_lib.count_params(abstract_state.params)

  # ---- checkpoint manager; the shape check happens before anything is written ----
  ckpt = checkpointing.Checkpointer(model_dir, keep=keep_checkpoints, async_save=async_checkpointing)
  ckpt.check_compatible(params_info)
  meta = {"params": params_info, "num_params": num_params, "mesh": {k: int(v) for k, v in mesh.shape.items()}}

  data_state = None
  latest = ckpt.latest_step() if resume else None
  if latest is not None:
    abstract_with_sh = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh
    )
    state, data_state = ckpt.restore(latest, abstract_with_sh)
    logging.info("Restored checkpoint step %d from %s", latest, model_dir)
    if console and jax.process_index() == 0:
      print(f"restored {model_dir}/checkpoint_{latest}", flush=True)
  else:
    with partitioner.context():
      state = jax.jit(init_state, out_shardings=state_sh)(init_key, train_key)
    if init_params_from:
      params = load_init_params(init_params_from, abstract_state.params, params_sh)
      with partitioner.context():  # fresh optimiser state for the loaded params
        opt_state = jax.jit(tx.init, out_shardings=state_sh.opt_state)(params)
      state = state.replace(params=params, opt_state=opt_state)
      logging.info("Initialised params from %s", init_params_from)
      if console and jax.process_index() == 0:
        print(f"initialised params from {init_params_from}", flush=True)

  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    try:
      with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    except Exception:  # pylint: disable=broad-except
      pass
    with open(os.path.join(model_dir, "model-info.txt"), "w") as f:
      f.write(f"num_params {num_params}\nmesh {dict(mesh.shape)}\n")
      for path, spec in jax.tree_util.tree_flatten_with_path(params_sh, is_leaf=lambda x: hasattr(x, "spec"))[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        shape, dtype = params_info.get(name, (None, None))
        f.write(f"{name} {shape} {dtype} {spec.spec}\n")

  # ---- jitted steps ----
  step_fn = train_step_lib.make_train_step(
    model,
    tx,
    learning_rate_fn,
    num_microbatches=num_microbatches,
    dynamic_loss_scale=dynamic_loss_scale,
    growth_interval=loss_scale_growth_interval,
    params_shardings=params_sh,
    logical_axis_rules=rules,
    single_reduction=single_gradient_reduction,
  )
  batch_sh = partitioner.batch_sharding(2)
  jit_step = jax.jit(
    step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, partitioner.replicated), donate_argnums=(0,)
  )
  jit_eval = jax.jit(
    train_step_lib.make_eval_step(model), in_shardings=(params_sh, batch_sh), out_shardings=partitioner.replicated
  )

  writer = metrics_lib.create_writer(model_dir, "train", enabled=write_summaries)
  eval_writer = metrics_lib.create_writer(model_dir, "training_eval", enabled=write_summaries)
  seq_len_full = sum(dict(train_dataset_cfg.task_feature_lengths).values())
  model_config = getattr(model.module, "config", None)  # None for a non-GPTDecoder module: MFU then reads 0
  fpt = model_config.flops_per_token(seq_len_full) if model_config is not None else 0.0
  peak = metrics_lib.peak_flops_per_device(override=peak_flops_per_device) * jax.device_count()

  def run_eval(step: int) -> Optional[Dict[str, float]]:
    if train_eval_dataset_cfg is None or eval_steps <= 0:
      return None
    it = _make_iterator(dataset_fn, train_eval_dataset_cfg, model, shuffle=False, num_epochs=1)
    loss_sum = tok = 0.0
    merged = None
    n = 0
    with partitioner.context():
      for batch in it:
        if n >= eval_steps:
          break
        if np.shape(next(iter(batch.values())))[0] * jax.process_count() != train_eval_dataset_cfg.batch_size:
          break
        out = jax.device_get(jit_eval(state.params, _to_global(batch, partitioner)))
        loss_sum += float(out["loss_sum"])
        tok += float(out["num_tokens"])
        mm = out["model_metrics"]
        merged = mm if merged is None else jax.tree.map(np.add, merged, mm)
        n += 1
    if n == 0:
      return None
    res = {"loss": loss_sum / max(tok, 1.0)}
    res["perplexity"] = metrics_lib.safe_exp(res["loss"])
    for k, v in train_step_lib.compute_model_metrics(merged).items():
      if k not in ("loss",):
        res[k] = v
    res["num_tokens"] = tok
    eval_writer.write_scalars(step, res)
    eval_writer.flush()
    if console and jax.process_index() == 0:
      print(f"eval step {step}: loss {res['loss']:.4g} ppl {res['perplexity']:.4g} ({n} batches)", flush=True)
    return res

  # ---- data ----
  train_iter = _make_iterator(dataset_fn, train_dataset_cfg, model, state=data_state)

  start_step = int(jax.device_get(state.step))
  end_step = total_steps if stop_at_step is None else min(total_steps, stop_at_step)
  history: List[Dict[str, float]] = []
  evals: List[Dict[str, Any]] = []
  tokens_seen = 0.0
  pending = None  # (step_index, metrics on device, wall time at dispatch, tokens processed)
  interval = {"loss_sum": 0.0, "tok": 0.0, "proc_tok": 0.0, "steps": 0, "t0": time.time(), "skipped": 0}
  total_skipped = 0
  skipped_samples = 0

  def save(step_no: int, force: bool = False):
    ds = train_iter.get_state() if hasattr(train_iter, "get_state") else None
    ckpt.save(step_no, state, ds, meta, force=force)

  def consume(p):
    """Host-side handling of one finished step's metrics (one step behind the device)."""
    nonlocal tokens_seen, total_skipped, skipped_samples
    step_no, dev_metrics, proc_tok = p
    m = jax.device_get(dev_metrics)
    rec = {
      "step": step_no,
      "loss": float(m["loss"]),
      "grad_norm": float(m["grad_norm"]),
      "learning_rate": float(m["learning_rate"]),
      "num_tokens": float(m["num_tokens"]),
      "finite": bool(m["finite"]),
      "loss_scale": float(m["loss_scale"]),
    }
    rec.update({f"model/{k}": v for k, v in train_step_lib.compute_model_metrics(m["model_metrics"]).items()})
    history.append(rec)
    if not rec["finite"]:
      total_skipped += 1
      interval["skipped"] += 1
      logging.warning(
        "step %d: non-finite loss/grad (loss=%s gnorm=%s); update skipped (%d in a row)",
        step_no,
        rec["loss"],
        rec["grad_norm"],
        int(m["bad_steps"]),
      )
      if int(m["bad_steps"]) >= max_consecutive_bad_steps:
        ckpt.wait()
        last = ckpt.latest_step()
        raise NonFiniteLossError(
          f"loss/gradients were NaN/Inf for {int(m['bad_steps'])} consecutive steps (last at step {step_no}); "
          f"stopping. No update was applied on those steps; the last checkpoint "
          f"({'step ' + str(last) if last is not None else 'none'}) in {model_dir} is intact."
        )
    else:
      tokens_seen += rec["num_tokens"]
      interval["loss_sum"] += rec["loss"] * rec["num_tokens"]
      interval["tok"] += rec["num_tokens"]
    interval["proc_tok"] += proc_tok
    interval["steps"] += 1
    if step_no % log_period == 0 or step_no == end_step:
      now = time.time()
      dt = max(now - interval["t0"], 1e-9)
      loss = interval["loss_sum"] / interval["tok"] if interval["tok"] else rec["loss"]
      tps = interval["proc_tok"] / dt
      if hasattr(train_iter, "stats"):
        try:
          skipped_samples = int(train_iter.stats().get("skipped_samples", 0))
        except Exception:  # pylint: disable=broad-except
          pass
      scal = {
        "loss": loss,
        "perplexity": metrics_lib.safe_exp(loss),
        "learning_rate": rec["learning_rate"],
        "grad_norm": rec["grad_norm"],
        "tokens_seen": tokens_seen,
        "tokens_per_sec": tps,
        "mfu": (fpt * tps / peak) if peak else 0.0,
        "step_time": dt / interval["steps"],
        "skipped_steps": float(total_skipped),
        "skipped_samples": float(skipped_samples),
      }
      if dynamic_loss_scale:
        scal["loss_scale"] = rec["loss_scale"]
      for k, v in rec.items():
        if k.startswith("model/") and k != "model/loss":
          scal[k[len("model/") :]] = v
      writer.write_scalars(step_no, scal)
      if console and jax.process_index() == 0:
        print(metrics_lib.progress_line(step_no, total_steps, scal), flush=True)
      interval.update(loss_sum=0.0, tok=0.0, proc_tok=0.0, steps=0, t0=now, skipped=0)

  # The train step is compiled ahead of time once per batch shape (staged warmup adds a second shape), so the
  # compile time can be reported; it runs exactly the program `jit_step` would.
  compiled_steps: Dict[Any, Any] = {}
  compile_info: Dict[str, float] = {}
  first_step_reported = False

  def run_step(st, gb):
    key = tuple(sorted((k, tuple(v.shape)) for k, v in gb.items()))
    fn = compiled_steps.get(key)
    if fn is None:
      t0 = time.time()
      fn = jit_step.lower(st, gb).compile()
      compiled_steps[key] = fn
      compile_info.setdefault("compile_time_s", time.time() - t0)
      logging.info("compiled the train step for %s in %.1fs", key, time.time() - t0)
    return fn(st, gb)

  step = start_step
  try:
    with partitioner.context():
      while step < end_step:
        try:
          batch = next(train_iter)
        except StopIteration:
          logging.warning("training data exhausted at step %d", step)
          break
        if staged_warmup_steps and step < staged_warmup_steps and warmup_train_context:
          batch = reshape_for_context(batch, warmup_train_context)
        proc_tok = float(np.prod(np.shape(batch["decoder_target_tokens"]))) * jax.process_count()
        gbatch = _to_global(batch, partitioner)
        state, dev_metrics = run_step(state, gbatch)
        step += 1
        if not first_step_reported:
          first_step_reported = True
          jax.block_until_ready(dev_metrics)
          peak_mem = metrics_lib.peak_memory_bytes()
          compile_info.update(peak_memory_bytes=peak_mem)
          if console and jax.process_index() == 0:
            print(metrics_lib.first_step_line(compile_info.get("compile_time_s", 0.0), peak_mem), flush=True)
        if pending is not None:
          consume(pending)
        pending = (step, dev_metrics, proc_tok)
        if step % checkpoint_period == 0 and step < end_step:
          consume(pending)
          pending = None
          save(step)
          if interval["steps"] == 0:
            interval["t0"] = time.time()
        if eval_period and step % eval_period == 0 and train_eval_dataset_cfg is not None:
          if pending is not None:
            consume(pending)
            pending = None
          evals.append({"step": step, **(run_eval(step) or {})})
          interval["t0"] = time.time() if interval["steps"] == 0 else interval["t0"]
      if pending is not None:
        consume(pending)
        pending = None
    if step > start_step or ckpt.latest_step() != step:
      save(step, force=True)
    ckpt.wait()
  finally:
    try:
      ckpt.wait()
    except Exception:  # pylint: disable=broad-except
      pass
    writer.flush()
    eval_writer.flush()

  if export_params_at_end and jax.process_index() == 0:
    out = checkpointing.export_params(model_dir, os.path.join(model_dir, "export"), step=step)
    if console:
      print(f"exported params to {out}", flush=True)
  ckpt.close()
  samples = None
  if sample_prompts:
    samples = sample_text(
      model,
      state.params,
      sample_prompts,
      sample_length,
      sample_temperature,
      sample_seed,
      top_k=sample_top_k,
      console=console,
    )
  if console and jax.process_index() == 0:
    print(f"done: step {step}, {time.time() - t_start:.1f}s, checkpoint {model_dir}/checkpoint_{step}", flush=True)
  return {
    "state": state,
    "history": history,
    "evals": evals,
    "step": step,
    "samples": samples,
    "compile_time_s": compile_info.get("compile_time_s"),
    "peak_memory_bytes": compile_info.get("peak_memory_bytes"),
  }


def sample_text(
  model: Any,
  params: Any,
  prompts: Sequence[str],
  length: int = 48,
  temperature: float = 0.0,
  seed: int = 0,
  console: bool = True,
  top_k: int = 0,
) -> Optional[List[str]]:
  """prompt + continuation for each prompt (decoded with `gpt_plugin.generate` through `model.vocabulary`).

  Returns None (with a warning) where it can't run: several processes (params not on one host), no
  vocabulary, or the generation API failing; training results are never lost to sampling."""
  if isinstance(prompts, str):
    prompts = [prompts]
  if jax.process_count() > 1:
    logging.warning("sample_prompts: sampling is skipped in multi-process runs; use python -m gpt_plugin.infer")
    return None
  try:
    from gpt_plugin import generate  # pylint: disable=g-import-not-at-top

    gen = generate.Generator(model, params)
    kwargs = dict(max_new_tokens=int(length))
    if temperature and temperature > 0:
      kwargs.update(sample=True, temperature=float(temperature), sample_rng=jax.random.PRNGKey(int(seed)))
      if top_k:
        kwargs.update(top_k=int(top_k))
    t0 = time.time()
    conts = gen.generate_text(list(prompts), **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("sample_prompts: sampling failed: %s: %s", type(e).__name__, e)
    if console:
      print(f"sampling failed: {type(e).__name__}: {e}", flush=True)
    return None
  texts = [p + c for p, c in zip(prompts, conts)]
  if console:
    how = "greedy" if not temperature or temperature <= 0 else f"temperature {temperature}, seed {seed}"
    how += f", top-k {top_k}" if top_k and temperature and temperature > 0 else ""
    for i, t in enumerate(texts):
      print(
        f"--- sample {i + 1}/{len(texts)} ({how}, {length} new tokens, {time.time() - t0:.1f}s) ---\n{t}", flush=True
      )
  return texts


def run_from_gin() -> Dict[str, Any]:
  """Calls `train_lib.train` with its gin bindings (the `python -m gpt_plugin.train` path).

  First starts multi-host JAX if the gin config asks for it (gin/meshes/gpu_multihost.gin, tpu_v4_32.gin).
  """
  try:
    init = gin.get_configurable(partitioning.maybe_initialize_distributed)
  except ValueError:
    init = None
  if init is not None and not _distributed_initialized():
    init()
  return gin.get_configurable(train)()


def _distributed_initialized() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    return distributed.global_state.client is not None
  except Exception:  # pylint: disable=broad-except
    return False
