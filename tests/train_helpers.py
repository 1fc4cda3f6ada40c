"""Test helpers for the training runner.

* `tiny_lm()`: the real `gpt_plugin.models.DecoderOnlyLM` around a tiny `GPTDecoder` (vocab 256, d 64, 4 heads,
  2 layers, parallel blocks, ALiBi by default).
* `SyntheticIterator`: a deterministic in-memory data source with the data-pipeline interface
  (get_state / state= / stats). It is kept (instead of tar shards) where a test needs rows with very different
  numbers of real tokens (gradient accumulation) or must start in well under a second; the multi-host and
  warm-start tests read real tar shards through `gpt_plugin.data.pipeline.get_dataset` (`write_token_shards`,
  `register_shard_task`).
* `PoisonLM`: the real model whose loss turns NaN on flagged batches (NaN-handling tests).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from gpt_plugin import models, network

VOCAB = 256
EOS_ID = 1


def tiny_config(**overrides) -> network.GPTConfig:
  kw = dict(
    vocab_size=VOCAB,
    emb_dim=64,
    num_heads=4,
    num_layers=2,
    mlp_dim=128,
    dtype="float32",
    position_embedding="alibi",
    block_type="parallel",
  )
  kw.update(overrides)
  return network.GPTConfig(**kw)


def tiny_lm(cls=models.DecoderOnlyLM, **overrides):
  vocab = seqio.PassThroughVocabulary(VOCAB, eos_id=EOS_ID)
  return cls(network.GPTDecoder(tiny_config(**overrides)), vocabulary=vocab)


class TinyLM(models.DecoderOnlyLM):
  """Kept for tests/train_test.gin: `TinyLM()` == `tiny_lm()` (real model), configurable from gin."""

  def __init__(self, **overrides):
    super().__init__(
      network.GPTDecoder(tiny_config(**overrides)), vocabulary=seqio.PassThroughVocabulary(VOCAB, eos_id=EOS_ID)
    )


class SyntheticIterator:
  """Global row r of batch s is a deterministic function of (seed, split, s, r); process p gets its rows only.
  Sequences are noisy arithmetic progressions mod vocab (learnable); every third row is partly padding
  (weights 0), so microbatches hold different numbers of real tokens."""

  def __init__(
    self,
    batch_size,
    length,
    vocab_size=VOCAB,
    seed=0,
    split="train",
    process_index=0,
    process_count=1,
    state=None,
    num_epochs=None,
  ):
    self.b, self.L, self.V, self.seed = batch_size, length, vocab_size, seed
    self.split = split
    self.p, self.P = process_index, process_count
    self.pos = int((state or {}).get("step", 0))
    self.num_batches = 4 if num_epochs else None

  def __iter__(self):
    return self

  def get_state(self):
    return {"step": self.pos}

  def stats(self):
    return {"skipped_samples": 0}

  def __next__(self):
    if self.num_batches is not None and self.pos >= self.num_batches:
      raise StopIteration
    rows = []
    weights = []
    for r in range(self.p * self.b, (self.p + 1) * self.b):
      rng = np.random.default_rng([self.seed, 1 if self.split == "train" else 2, self.pos, r])
      start, stride = rng.integers(2, self.V), rng.integers(1, 4)
      seq = (start + stride * np.arange(self.L + 1)) % (self.V - 2) + 2
      noise = rng.random(self.L + 1) < 0.1
      seq = np.where(noise, rng.integers(2, self.V, self.L + 1), seq)
      w = np.ones(self.L, np.int32)
      npad = int(rng.integers(0, self.L // 2)) if r % 3 == 0 else 0
      if npad:
        w[-npad:] = 0
      rows.append(seq)
      weights.append(w)
    seq = np.stack(rows).astype(np.int32)
    self.pos += 1
    w = np.stack(weights)
    return {
      "decoder_input_tokens": seq[:, :-1] * (w > 0),
      "decoder_target_tokens": seq[:, 1:] * (w > 0),
      "decoder_loss_weights": w,
    }


def synthetic_dataset_fn(vocab_size=VOCAB):
  def fn(
    name,
    feature_lengths,
    split,
    batch_size,
    *,
    shuffle=True,
    seed=0,
    pack=True,
    use_cached=False,
    process_index=0,
    process_count=1,
    num_epochs=None,
    feature_converter_cls=None,
    state=None,
  ):
    return SyntheticIterator(
      batch_size, feature_lengths["targets"], vocab_size, seed, split, process_index, process_count, state, num_epochs
    )

  return fn


class PoisonIterator(SyntheticIterator):
  """Adds a `poison` feature that is 1 from batch `poison_from` on (PoisonLM turns that into a NaN loss)."""

  def __init__(self, *args, poison_from=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.poison_from = poison_from

  def __next__(self):
    pos = self.pos
    batch = super().__next__()
    flag = int(self.poison_from is not None and pos >= self.poison_from)
    batch["poison"] = np.full((self.b, 1), flag, np.int32)
    return batch


class PoisonLM(models.DecoderOnlyLM):
  """The real model; the loss is NaN on batches whose `poison` feature is set."""

  def __init__(self):
    super().__init__(network.GPTDecoder(tiny_config()), vocabulary=seqio.PassThroughVocabulary(VOCAB, EOS_ID))

  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    return jnp.where(batch["poison"].sum() > 0, jnp.nan, loss), metrics


def poison_dataset_fn(poison_from):
  def fn(
    name,
    feature_lengths,
    split,
    batch_size,
    *,
    shuffle=True,
    seed=0,
    pack=True,
    use_cached=False,
    process_index=0,
    process_count=1,
    num_epochs=None,
    feature_converter_cls=None,
    state=None,
  ):
    return PoisonIterator(
      batch_size,
      feature_lengths["targets"],
      VOCAB,
      seed,
      split,
      process_index,
      process_count,
      state,
      num_epochs,
      poison_from=poison_from if split == "train" else None,
    )

  return fn


# ------------------------------------------------------------------------------------------ real tar shards
def write_token_shards(directory, num_shards=4, docs_per_shard=24, seed=0, prefix="train"):
  """Writes `num_shards` webdataset tar shards of `.npy` token documents (ids in [2, VOCAB), EOS = 1 appended by
  the documents themselves) with tests/fixtures/data/shardgen.py; returns their paths."""
  import sys

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "data"))
  import shardgen  # pylint: disable=import-outside-toplevel

  os.makedirs(directory, exist_ok=True)
  paths = []
  for s in range(num_shards):
    rng = np.random.default_rng([seed, s])
    docs = []
    for d in range(docs_per_shard):
      n = int(rng.integers(8, 60))
      start, stride = rng.integers(2, VOCAB), rng.integers(1, 5)
      ids = (start + stride * np.arange(n)) % (VOCAB - 2) + 2
      docs.append((f"s{s:02d}d{d:03d}", np.concatenate([ids, [EOS_ID]]).astype(np.int32)))
    paths.append(shardgen.write_shard(os.path.join(str(directory), f"{prefix}-{s:06d}.tar"), docs, fmt="npy"))
  return paths


def register_shard_task(name, train_paths, validation_paths=None):
  from gpt_plugin.data import tasks_lib  # pylint: disable=import-outside-toplevel

  tasks_lib.register_tar_shard_task(
    name,
    train_shards=list(train_paths),
    validation_shards=list(validation_paths) if validation_paths else None,
    vocab_size=VOCAB,
    eos_id=EOS_ID,
  )
  return name


class MergedProcessesIterator:
  """Single-process view of what `process_count` processes read together: the global batch is process 0's
  rows, then process 1's, ... (the order `jax.make_array_from_process_local_data` assembles them in)."""

  def __init__(self, iterators):
    self.its = iterators

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self.its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self):
    return {"processes": [it.get_state() for it in self.its]}

  def stats(self):
    return {"skipped_samples": sum(int(it.stats().get("skipped_samples", 0)) for it in self.its)}


def as_if_processes_dataset_fn(process_count, states=None):
  """A dataset_fn for one process that reads the same global batches as `process_count` processes would
  (each `get_dataset(process_index=i, process_count=process_count)`); `states` (list, one per process)
  resumes each."""
  from gpt_plugin.data import pipeline  # pylint: disable=import-outside-toplevel

  n_proc = process_count

  def fn(name, feature_lengths, split, batch_size, *, state=None, process_index=0, process_count=1, **kw):
    assert process_index == 0 and process_count == 1, "for single-process runs"
    per = batch_size // n_proc
    sts = states or (state or {}).get("processes") or [None] * n_proc
    return MergedProcessesIterator(
      [
        pipeline.get_dataset(
          name, feature_lengths, split, per, process_index=i, process_count=n_proc, state=sts[i], **kw
        )
        for i in range(n_proc)
      ]
    )

  return fn


# ------------------------------------------------------------------------------------------------ runner
def run_train(
  model_dir,
  *,
  steps=5,
  mesh_shape=(1, 1, 1),
  num_devices=1,
  param_rules=(),
  batch_size=8,
  num_microbatches=1,
  model=None,
  dataset_fn=None,
  lr=1e-2,
  eval_period=0,
  checkpoint_period=1000,
  stop_at_step=None,
  task="synthetic",
  length=16,
  **kwargs,
):
  """In-process training of the tiny real model on a chosen mesh; returns train_lib.train's result."""
  from gpt_plugin import partitioning
  from gpt_plugin.training import optimizer, train_lib

  cfg = train_lib.DatasetConfig(task, {"targets": length}, "train", batch_size)
  ev = train_lib.DatasetConfig(task, {"targets": length}, "validation", batch_size)
  devices = jax.devices()[:num_devices]
  options = dict(  # defaults a test may override through kwargs
    learning_rate_fn=optimizer.warmup_cosine_schedule(lr, 2, 40),
    console=False,
    write_summaries=False,
    log_period=5,
  )
  options.update(kwargs)
  return train_lib.train(
    model=model or tiny_lm(),
    model_dir=str(model_dir),
    train_dataset_cfg=cfg,
    train_eval_dataset_cfg=ev,
    total_steps=steps,
    dataset_fn=dataset_fn or synthetic_dataset_fn(),
    num_microbatches=num_microbatches,
    mesh_fn=functools.partial(partitioning.create_mesh, mesh_shape, devices=devices),
    logical_axis_rules=partitioning.logical_axis_rules(list(param_rules)),
    eval_period=eval_period,
    eval_steps=2,
    checkpoint_period=checkpoint_period,
    stop_at_step=stop_at_step,
    **options,
  )


def losses(result):
  return np.array([h["loss"] for h in result["history"]])


def host_params(result):
  return jax.tree.map(np.asarray, jax.device_get(result["state"].params))


def param_spec(result, path):
  """PartitionSpec of the param at 'a/b/c' in a train result."""
  node = result["state"].params
  for k in path.split("/"):
    node = node[k]
  return node.sharding.spec
