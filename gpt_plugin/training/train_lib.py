"""The training loop behind `python -m gpt_plugin.train` (gin binds `train_lib.train`, see gin/runs/*.gin)."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import logging
import gin
import jax
import numpy as np

from gpt_plugin import partitioning
from gpt_plugin import tree_paths
from gpt_plugin.data import vocab_check
from gpt_plugin import checkpoint_layout
from gpt_plugin.training import checkpointing
from gpt_plugin.training import console as console_lib
from gpt_plugin.training import evaluator as evaluator_lib
from gpt_plugin.training import loop as loop_lib
from gpt_plugin.training import metrics as metrics_lib
from gpt_plugin.training import optimizer as optimizer_lib
from gpt_plugin.training import periodic as periodic_lib
from gpt_plugin.training import schedule_check
from gpt_plugin.training import state_init
from gpt_plugin.training import step_logger as step_logger_lib
from gpt_plugin.training import summary_steps
from gpt_plugin.training import train_errors
from gpt_plugin.training import train_step as train_step_lib

# Re-exported: the errors and the warm start have their own modules now.
NonFiniteLossError = train_errors.NonFiniteLossError
NoStepAppliedError = train_errors.NoStepAppliedError
InitParamsMismatchError = state_init.InitParamsMismatchError
load_init_params = state_init.load_init_params


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


def _input_shapes(length: int) -> Dict[str, tuple]:
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


def _split_available(cfg: DatasetConfig) -> bool:
  """False when `cfg` names a registered seqio task or mixture without `cfg.split` (True for names a custom
  `dataset_fn` resolves itself)."""
  import seqio  # pylint: disable=g-import-not-at-top

  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if cfg.mixture_or_task_name not in names:
    return True
  return cfg.split in seqio.get_mixture_or_task(cfg.mixture_or_task_name).splits


@dataclasses.dataclass
class TrainConfig:
  """Every argument of `train` (same names, same defaults); the parts of the trainer read their options here."""

  model: Any
  model_dir: str
  train_dataset_cfg: DatasetConfig
  total_steps: int
  train_eval_dataset_cfg: Optional[DatasetConfig] = None
  optimizer_fn: Callable[..., Any] = optimizer_lib.adamw
  learning_rate_fn: Optional[Callable[[Any], Any]] = None
  num_microbatches: int = 1
  single_gradient_reduction: bool = True
  random_seed: int = 0
  mesh_fn: Callable[[], Any] = partitioning.create_mesh
  logical_axis_rules: Optional[Sequence] = None
  checkpoint_period: int = 1000
  keep_checkpoints: Optional[int] = 3
  async_checkpointing: bool = True
  resume: bool = True
  eval_period: int = 1000
  eval_steps: int = 20
  log_period: int = 10
  max_consecutive_bad_steps: int = 10
  dynamic_loss_scale: bool = False
  initial_loss_scale: float = 2.0**15
  loss_scale_growth_interval: int = 2000
  staged_warmup_steps: int = 0
  warmup_train_context: Optional[int] = None
  peak_flops_per_device: Optional[float] = None
  dataset_fn: Optional[Callable[..., Any]] = None
  export_params_at_end: bool = False
  init_params_from: Optional[str] = None
  sample_prompts: Optional[Sequence[str]] = None
  sample_length: int = 48
  sample_temperature: float = 0.0
  sample_top_k: int = 0
  sample_seed: int = 0
  write_summaries: bool = True
  stop_at_step: Optional[int] = None
  console: bool = True
  seqio_cache_dirs: Sequence[str] = ()

  @property
  def end_step(self) -> int:
    return self.total_steps if self.stop_at_step is None else min(self.total_steps, self.stop_at_step)

  @property
  def seq_len(self) -> int:
    return sum(int(v) for v in dict(self.train_dataset_cfg.task_feature_lengths).values())


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
  seqio_cache_dirs: Sequence[str] = (),
) -> Dict[str, Any]:
  """Trains `model` for `total_steps` steps (resuming from the newest checkpoint in `model_dir` that restores).

  `stop_at_step` ends this invocation early (checkpointing there) without changing the schedule.
  `init_params_from` (warm start): when `model_dir` has no checkpoint yet, the params come from this params-only
  checkpoint (`python -m gpt_plugin.convert` / `checkpointing.export_params` output, see `load_init_params`)
  instead of the random init; optimiser state, step and data start fresh. Ignored once `model_dir` holds a
  checkpoint (resuming wins).
  `sample_prompts`: at the end, continue each prompt by `sample_length` tokens from the final params with
  `gpt_plugin.generate` (greedy when `sample_temperature` is 0, else temperature sampling, top-k when
  `sample_top_k` > 0, seeded by `sample_seed`) through the model's vocabulary, and print prompt + continuation (result key 'samples').
  The last step of the run is always checkpointed, and evaluated when evaluation is on (`eval_period` > 0).
  A rerun once `model_dir` holds step `total_steps` trains nothing and rewrites nothing.
  `seqio_cache_dirs` (gin: SEQIO_CACHE_DIRS): directories written by seqio's cache job, added with
  `seqio.add_global_cache_dirs` so that `use_cached=True` (USE_CACHED_TASKS) finds the cached tasks there.
  Returns {'state', 'history' (per-step dicts of floats), 'evals', 'step', 'samples', 'compile_time_s',
  'peak_memory_bytes', 'time_to_first_step_s'}.
  """
  return run_training(TrainConfig(**locals()))


@dataclasses.dataclass
class _Setup:
  """What the run is built from: the learning-rate schedule, the mesh and the train state's spec."""

  learning_rate_fn: Callable[[Any], Any]
  mesh: Any
  partitioner: partitioning.Partitioner
  spec: state_init.StateSpec


def _setup(c: TrainConfig) -> _Setup:
  lr_fn = c.learning_rate_fn
  if lr_fn is None:
    lr_fn = optimizer_lib.warmup_cosine_schedule(
      decay_steps=c.total_steps, warmup_steps=min(1000, max(c.total_steps // 10, 1))
    )
  tx = c.optimizer_fn(learning_rate=lr_fn)
  rules = tuple(c.logical_axis_rules) if c.logical_axis_rules is not None else partitioning.logical_axis_rules()
  mesh = c.mesh_fn()
  partitioner = partitioning.Partitioner(mesh, rules)
  dp = partitioner.data_parallel_size
  if c.train_dataset_cfg.batch_size % (dp * max(c.num_microbatches, 1)) and c.num_microbatches > 1:
    raise ValueError(
      f"batch size {c.train_dataset_cfg.batch_size} must be divisible by data-parallel size {dp} x "
      f"num_microbatches {c.num_microbatches}"
    )
  logging.info("mesh %s, rules %s", dict(mesh.shape), rules)
  spec = state_init.build_state_spec(
    c.model,
    tx,
    partitioner,
    _input_shapes(c.seq_len),
    c.random_seed,
    c.initial_loss_scale if c.dynamic_loss_scale else 1.0,
  )
  return _Setup(lr_fn, mesh, partitioner, spec)


def run_training(c: TrainConfig) -> Dict[str, Any]:
  """`train` with its arguments in a TrainConfig: set up, restore or init, train, then export and sample."""
  t_start = time.time()
  if c.seqio_cache_dirs:
    import seqio  # pylint: disable=g-import-not-at-top

    seqio.add_global_cache_dirs(list(c.seqio_cache_dirs))
  _check_required(
    model=c.model,
    model_dir=c.model_dir,
    total_steps=c.total_steps,
    mixture_or_task_name=c.train_dataset_cfg.mixture_or_task_name,
    task_feature_lengths=c.train_dataset_cfg.task_feature_lengths,
    batch_size=c.train_dataset_cfg.batch_size,
  )
  # the model's vocabulary and embedding against the task's tokenizer, before MODEL_DIR is touched
  vocab_check.check_model_against_registered_task(c.model, c.train_dataset_cfg.mixture_or_task_name)
  ev = c.train_eval_dataset_cfg
  if ev is not None and (ev.mixture_or_task_name is gin.REQUIRED or ev.task_feature_lengths is gin.REQUIRED):
    c = dataclasses.replace(c, train_eval_dataset_cfg=None)
  elif ev is not None and not _split_available(ev):
    logging.warning(
      "%s has no %r split: in-training evaluation is off (register validation shards to turn it on)",
      ev.mixture_or_task_name,
      ev.split,
    )
    c = dataclasses.replace(c, train_eval_dataset_cfg=None)
  con = console_lib.Console(c.console)
  setup = _setup(c)
  ckpt = checkpointing.Checkpointer(c.model_dir, keep=c.keep_checkpoints, async_save=c.async_checkpointing)
  try:  # the checkpoint manager is closed on every exit, so orbax's threads print nothing after an error
    ckpt.check_compatible(setup.spec.params_info)  # before anything is written
    state, data_state, restored = state_init.init_or_restore(
      setup.spec, ckpt, setup.partitioner, resume=c.resume, init_params_from=c.init_params_from, console=con
    )
    if restored is not None and restored >= c.end_step:
      con.print(_finished_message(c, restored))
      return _result(state, restored, [], [], {})
    if restored is not None:
      con.print(f"restored {checkpoint_layout.step_dir(c.model_dir, restored)}")
    _warn_if_schedule_changed(c, ckpt, restored, setup.learning_rate_fn)
    _write_run_files(c, setup)
    con.print(_banner(c, setup, restored))
    step, state, logger, periodic, info = _train(c, setup, ckpt, con, state, data_state, restored or 0, t_start)
  finally:
    ckpt.close()
  return _finish(c, con, state, step, logger, periodic, info, t_start)


def _finished_message(c: TrainConfig, step: int) -> str:
  if step >= c.total_steps:
    return f"MODEL_DIR {c.model_dir} already holds step {step} of {c.total_steps}; raise TRAIN_STEPS to continue"
  return f"MODEL_DIR {c.model_dir} already holds step {step}; stop_at_step is {c.stop_at_step}: nothing to train"


def _warn_if_schedule_changed(c: TrainConfig, ckpt, restored: Optional[int], lr_fn) -> None:
  if restored is None:
    return
  meta = ckpt.read_meta(restored) or {}
  warning = schedule_check.schedule_change_warning(meta.get("schedule"), lr_fn, restored, c.total_steps)
  if warning:
    logging.warning("%s", warning)


def _write_run_files(c: TrainConfig, setup: _Setup) -> None:
  """MODEL_DIR/config.gin (the operative gin config) and model-info.txt (params, shapes, shardings)."""
  if jax.process_index() != 0:
    return
  os.makedirs(c.model_dir, exist_ok=True)
  try:
    with open(os.path.join(c.model_dir, "config.gin"), "w") as f:
      f.write(gin.config_str())
  except Exception:  # pylint: disable=broad-except
    pass
  params_info = setup.spec.params_info
  with open(os.path.join(c.model_dir, "model-info.txt"), "w") as f:
    f.write(f"num_params {setup.spec.num_params}\nmesh {dict(setup.mesh.shape)}\n")
    for name, spec in tree_paths.named_leaves(setup.spec.params_sh, is_leaf=lambda x: hasattr(x, "spec")):
      shape, dtype = params_info.get(name, (None, None))
      f.write(f"{name} {shape} {dtype} {spec.spec}\n")


def _banner(c: TrainConfig, setup: _Setup, restored: Optional[int]) -> str:
  return console_lib.banner(
    model_line=console_lib.model_summary(c.model, setup.spec.num_params),
    gin_files=console_lib.gin_files_from_flags(),
    batch_size=c.train_dataset_cfg.batch_size,
    seq_len=c.seq_len,
    num_microbatches=c.num_microbatches,
    mesh_shape=setup.mesh.shape,
    model_dir=c.model_dir,
    resume_step=restored,
    total_steps=c.total_steps,
  )


def _writers(c: TrainConfig, resumed: bool):
  """TensorBoard writers for train/ and training_eval/; after a resume, steps already logged are not rewritten."""
  out = []
  for name in ("train", "training_eval"):
    w = metrics_lib.create_writer(c.model_dir, name, enabled=c.write_summaries)
    out.append(summary_steps.dedup_writer(w, os.path.join(c.model_dir, name), resumed and c.write_summaries))
  return out


def _jitted_steps(c: TrainConfig, setup: _Setup):
  spec, partitioner = setup.spec, setup.partitioner
  step_fn = train_step_lib.make_train_step(
    c.model,
    spec.tx,
    setup.learning_rate_fn,
    num_microbatches=c.num_microbatches,
    dynamic_loss_scale=c.dynamic_loss_scale,
    growth_interval=c.loss_scale_growth_interval,
    params_shardings=spec.params_sh,
    logical_axis_rules=partitioner.rules,
    single_reduction=c.single_gradient_reduction,
  )
  batch_sh = partitioner.batch_sharding(2)
  jit_step = jax.jit(
    step_fn,
    in_shardings=(spec.state_sh, batch_sh),
    out_shardings=(spec.state_sh, partitioner.replicated),
    donate_argnums=(0,),
  )
  jit_eval = jax.jit(
    train_step_lib.make_eval_step(c.model),
    in_shardings=(spec.params_sh, batch_sh),
    out_shardings=partitioner.replicated,
  )
  return jit_step, jit_eval


def _make_logger(c: TrainConfig, con, ckpt, writer, data_stats) -> step_logger_lib.StepLogger:
  def stop_message() -> str:
    ckpt.wait()
    last = ckpt.latest_step()
    return f"the last checkpoint ({'step ' + str(last) if last is not None else 'none'}) in {c.model_dir} is intact."

  return step_logger_lib.StepLogger(
    writer=writer,
    console=con,
    total_steps=c.total_steps,
    end_step=c.end_step,
    log_period=c.log_period,
    max_consecutive_bad_steps=c.max_consecutive_bad_steps,
    dynamic_loss_scale=c.dynamic_loss_scale,
    flops_per_token=step_logger_lib.flops_per_token(c.model, c.seq_len),
    peak_flops=metrics_lib.peak_flops_per_device(override=c.peak_flops_per_device) * jax.device_count(),
    data_stats=data_stats,
    stop_message=stop_message,
    vocab_size=getattr(getattr(getattr(c.model, "module", None), "config", None), "vocab_size", None),
  )


def _make_evaluator(
  c: TrainConfig, con, dataset_fn, partitioner, jit_eval, writer
) -> Optional[evaluator_lib.Evaluator]:
  if c.train_eval_dataset_cfg is None or c.eval_steps <= 0:
    return None
  return evaluator_lib.Evaluator(
    make_iterator=lambda: _make_iterator(dataset_fn, c.train_eval_dataset_cfg, c.model, shuffle=False, num_epochs=1),
    eval_steps=c.eval_steps,
    global_batch_size=c.train_eval_dataset_cfg.batch_size,
    jit_eval=jit_eval,
    to_global=functools.partial(_to_global, partitioner=partitioner),
    context=partitioner.context,
    writer=writer,
    console=con,
  )


def _train(c: TrainConfig, setup: _Setup, ckpt, con, state, data_state, start_step: int, t_start: float):
  """Builds the step logger, the evaluator and the periodic actions around the jitted step and runs the loop."""
  dataset_fn = c.dataset_fn or default_dataset_fn
  partitioner = setup.partitioner
  writer, eval_writer = _writers(c, resumed=start_step > 0)
  jit_step, jit_eval = _jitted_steps(c, setup)
  to_global = functools.partial(_to_global, partitioner=partitioner)
  train_iter = _make_iterator(dataset_fn, c.train_dataset_cfg, c.model, state=data_state)
  base_meta = {
    "params": setup.spec.params_info,
    "num_params": setup.spec.num_params,
    "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
  }

  def save(step_no: int, st: Any, force: bool) -> None:
    ds = train_iter.get_state() if hasattr(train_iter, "get_state") else None
    schedule = schedule_check.schedule_record(setup.learning_rate_fn, step_no, c.total_steps)
    ckpt.save(step_no, st, ds, {**base_meta, "schedule": schedule}, force=force)

  logger = _make_logger(c, con, ckpt, writer, getattr(train_iter, "stats", None))
  evaluator = _make_evaluator(c, con, dataset_fn, partitioner, jit_eval, eval_writer)
  periodic = periodic_lib.PeriodicActions(
    checkpoint_period=c.checkpoint_period,
    eval_period=c.eval_period,
    end_step=c.end_step,
    save=save,
    evaluator=evaluator,
    logger=logger,
  )
  compiled = loop_lib.CompiledStep(jit_step, con)
  first = loop_lib.FirstStepReport(compiled, con, t_start)

  def prepare_batch(batch: Dict[str, np.ndarray], step: int) -> Dict[str, jax.Array]:
    if c.staged_warmup_steps and step < c.staged_warmup_steps and c.warmup_train_context:
      batch = reshape_for_context(batch, c.warmup_train_context)
    return to_global(batch)

  parts = loop_lib.LoopParts(
    state=state,
    start_step=start_step,
    end_step=c.end_step,
    train_iter=train_iter,
    step_fn=compiled,
    prepare_batch=prepare_batch,
    partitioner=partitioner,
    logger=logger,
    periodic=periodic,
    console=con,
    on_first_step=first,
    latest_saved=ckpt.latest_step,
  )
  try:
    step, state = loop_lib.train_loop(parts)
    ckpt.wait()
  finally:
    writer.flush()
    eval_writer.flush()
  return step, state, logger, periodic, first.info


def _finish(c: TrainConfig, con, state, step: int, logger, periodic, info: Dict[str, Any], t_start: float):
  """After training: the params-only export, the samples and the closing line."""
  if c.export_params_at_end and jax.process_index() == 0:
    out = checkpoint_layout.export_params(c.model_dir, os.path.join(c.model_dir, "export"), step=step)
    con.print(f"exported params to {out}")
  samples = None
  if c.sample_prompts:
    samples = sample_text(
      c.model,
      state.params,
      c.sample_prompts,
      c.sample_length,
      c.sample_temperature,
      c.sample_seed,
      top_k=c.sample_top_k,
      console=con.enabled,
    )
  con.print(
    f"done: step {step}, {time.time() - t_start:.1f}s, checkpoint {checkpoint_layout.step_dir(c.model_dir, step)}"
  )
  return _result(state, step, logger.history, periodic.evals, info, samples)


def _result(state, step: int, history: List[Dict[str, float]], evals: List[Dict[str, Any]], info, samples=None):
  return {
    "state": state,
    "history": history,
    "evals": evals,
    "step": step,
    "samples": samples,
    "compile_time_s": info.get("compile_time_s"),
    "peak_memory_bytes": info.get("peak_memory_bytes"),
    "time_to_first_step_s": info.get("time_to_first_step_s"),
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
  """Calls `train_lib.train` with its gin bindings (the `python -m gpt_plugin.train` path), after starting
  multi-host JAX if the gin config asks for it (a no-op when the runner already did)."""
  from gpt_plugin import gin_utils  # pylint: disable=g-import-not-at-top

  gin_utils.maybe_initialize_distributed_from_gin()
  return gin.get_configurable(train)()
