"""Test helpers for the training runner: a tiny stand-in LM with the DecoderOnlyLM interface and a
deterministic synthetic data iterator with the data-pipeline interface (get_state / state= / stats)."""
from typing import Any, Mapping, Optional

import clu.metrics
import flax
import flax.linen as nn
from flax.linen import partitioning as nnp
import jax
import jax.numpy as jnp
import numpy as np


class TinyNet(nn.Module):
  vocab_size: int = 32
  emb_dim: int = 16
  mlp_dim: int = 32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, tokens, targets=None, decoder_segment_ids=None, decoder_positions=None,
               decoder_causal_attention=None, enable_dropout=False, decode=False):
    emb = nnp.param_with_axes("embedding", nn.initializers.normal(0.1), (self.vocab_size, self.emb_dim),
                              jnp.float32, axes=("vocab", "embed"))
    x = jnp.take(emb, tokens, axis=0)
    # cheap "context": previous token embedding mixed in
    prev = jnp.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    mix = nnp.param_with_axes("mix", nn.initializers.normal(0.1), (self.emb_dim, self.emb_dim), jnp.float32,
                              axes=("embed", "mlp"))
    x = x + prev @ mix[:, : self.emb_dim]
    wi = nnp.param_with_axes("wi", nn.initializers.normal(0.1), (self.emb_dim, self.mlp_dim), jnp.float32,
                             axes=("embed", "mlp"))
    bi = nnp.param_with_axes("bi", nn.initializers.zeros, (self.mlp_dim,), jnp.float32, axes=("mlp",))
    wo = nnp.param_with_axes("wo", nn.initializers.normal(0.1), (self.mlp_dim, self.emb_dim), jnp.float32,
                             axes=("mlp", "embed"))
    h = nn.gelu(x @ wi + bi)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not enable_dropout)
    x = x + h @ wo
    scale = nnp.param_with_axes("scale", nn.initializers.ones, (self.emb_dim,), jnp.float32, axes=("embed",))
    x = x * scale
    return jnp.einsum("bld,vd->blv", x, emb)


@flax.struct.dataclass
class Sum(clu.metrics.Metric):
  """clu 0.0.12 has no metrics.Sum; same idea as T5X's."""
  value: jax.Array

  def merge(self, other):
    return type(self)(self.value + other.value)

  def compute(self):
    return self.value


class TinyLM:
  """Stand-in with the gpt_plugin.models.DecoderOnlyLM interface."""
  FEATURE_CONVERTER_CLS = None  # real models: seqio.DecoderFeatureConverter (not needed by synthetic data)

  def __init__(self, vocab_size=32, emb_dim=16, mlp_dim=32, dropout_rate=0.0):
    self.module = TinyNet(vocab_size, emb_dim, mlp_dim, dropout_rate)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    shape = input_shapes["decoder_input_tokens"]
    return flax.core.freeze(self.module.init(rng, jnp.ones(shape, jnp.int32), jnp.ones(shape, jnp.int32)))

  def _loss(self, params, batch, rng):
    logits = self.module.apply({"params": params}, batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                               enable_dropout=rng is not None, rngs={"dropout": rng} if rng is not None else None)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    tgt = batch["decoder_target_tokens"]
    w = batch["decoder_loss_weights"].astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    denom = jnp.maximum(w.sum(), 1e-8)
    loss = (nll * w).sum() / denom
    acc = ((jnp.argmax(logits, -1) == tgt) * w).sum()
    metrics = {"loss": clu.metrics.Average(total=(nll * w).sum(), count=w.sum()),
               "accuracy": clu.metrics.Average(total=acc, count=w.sum()),
               "num_tokens": Sum(value=w.sum())}
    return loss, metrics

  def loss_fn(self, params, batch, dropout_rng):
    return self._loss(params, batch, dropout_rng)

  def eval_fn(self, params, batch):
    return self._loss(params, batch, None)


class SyntheticIterator:
  """Global row r of batch s is a deterministic function of (seed, split, s, r); process p gets its rows only.
  Sequences are noisy arithmetic progressions mod vocab (learnable); some rows have padding (weights 0)."""

  def __init__(self, batch_size, length, vocab_size=32, seed=0, split="train", process_index=0, process_count=1,
               state=None, num_epochs=None, nan_after=None):
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
      start, stride = rng.integers(1, self.V), rng.integers(1, 4)
      seq = (start + stride * np.arange(self.L + 1)) % (self.V - 1) + 1
      noise = rng.random(self.L + 1) < 0.1
      seq = np.where(noise, rng.integers(1, self.V, self.L + 1), seq)
      w = np.ones(self.L, np.int32)
      npad = int(rng.integers(0, self.L // 2)) if r % 3 == 0 else 0
      if npad:
        w[-npad:] = 0
      rows.append(seq)
      weights.append(w)
    seq = np.stack(rows).astype(np.int32)
    self.pos += 1
    w = np.stack(weights)
    return {"decoder_input_tokens": seq[:, :-1] * (w > 0), "decoder_target_tokens": seq[:, 1:] * (w > 0),
            "decoder_loss_weights": w}


def synthetic_dataset_fn(vocab_size=32):
  def fn(name, feature_lengths, split, batch_size, *, shuffle=True, seed=0, pack=True, use_cached=False,
         process_index=0, process_count=1, num_epochs=None, feature_converter_cls=None, state=None):
    return SyntheticIterator(batch_size, feature_lengths["targets"], vocab_size, seed, split, process_index,
                             process_count, state, num_epochs)
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


class PoisonLM(TinyLM):
  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    return jnp.where(batch["poison"].sum() > 0, jnp.nan, loss), metrics


def poison_dataset_fn(poison_from):
  def fn(name, feature_lengths, split, batch_size, *, shuffle=True, seed=0, pack=True, use_cached=False,
         process_index=0, process_count=1, num_epochs=None, feature_converter_cls=None, state=None):
    return PoisonIterator(batch_size, feature_lengths["targets"], 32, seed, split, process_index, process_count,
                          state, num_epochs, poison_from=poison_from if split == "train" else None)
  return fn


def run_train(model_dir, *, steps=5, mesh_shape=(1, 1, 1), num_devices=1, param_rules=(), batch_size=8,
              num_microbatches=1, model=None, dataset_fn=None, lr=1e-2, eval_period=0, checkpoint_period=1000,
              stop_at_step=None, **kwargs):
  """In-process training of the stand-in model on a chosen mesh; returns train_lib.train's result."""
  import functools
  from gpt_plugin import partitioning
  from gpt_plugin.training import optimizer, train_lib
  cfg = train_lib.DatasetConfig("synthetic", {"targets": 16}, "train", batch_size)
  ev = train_lib.DatasetConfig("synthetic", {"targets": 16}, "validation", batch_size)
  devices = jax.devices()[:num_devices]
  return train_lib.train(
      model=model or TinyLM(), model_dir=str(model_dir), train_dataset_cfg=cfg, train_eval_dataset_cfg=ev,
      total_steps=steps, dataset_fn=dataset_fn or synthetic_dataset_fn(),
      learning_rate_fn=optimizer.warmup_cosine_schedule(lr, 2, 40), num_microbatches=num_microbatches,
      mesh_fn=functools.partial(partitioning.create_mesh, mesh_shape, devices=devices),
      logical_axis_rules=partitioning.logical_axis_rules(list(param_rules)), eval_period=eval_period,
      eval_steps=2, checkpoint_period=checkpoint_period, stop_at_step=stop_at_step, console=False,
      write_summaries=False, log_period=5, **kwargs)


def losses(result):
  return np.array([h["loss"] for h in result["history"]])


def host_params(result):
  return jax.tree.map(np.asarray, jax.device_get(result["state"].params))
