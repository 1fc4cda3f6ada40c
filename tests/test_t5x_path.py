"""The real T5X path: our GPTDecoder inside t5x.models.DecoderOnlyModel, t5x.decoding vs gpt_plugin.decoding,
`python -m t5x.train` / `t5x.infer` / `t5x.eval` with gin/t5x/*.gin (t5x.eval's loss, perplexity and bits per byte
equal gpt_plugin.eval's on the same checkpoint and tokens), and checkpoints crossing between the runners.

Skipped (with the reason) when t5x is not importable. To run: put the t5x, airio and jestimator sources on
PYTHONPATH and install tensorboard grain fiddle cached_property jaxtyping (README.md, "The real T5X path").
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("t5x") is None:
  pytest.skip("t5x is not importable (see README.md, 'The real T5X path')", allow_module_level=True)

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

try:
  from t5x import decoding as t5x_decoding  # noqa: E402
  from t5x import models as t5x_models  # noqa: E402
except Exception as e:  # pylint: disable=broad-except
  pytest.skip(f"t5x is present but does not import: {e}", allow_module_level=True)

from test_eval_metrics import assert_eval_runner_agrees  # noqa: E402

from gpt_plugin import decoding, generate, models, params_io  # noqa: E402
from gpt_plugin.data import sample_task  # noqa: E402
from gpt_plugin.inference import eval_lib  # noqa: E402
from gpt_plugin.inference import t5x_compat  # noqa: E402
from gpt_plugin.network import GPTConfig, GPTDecoder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 97


def tiny(**kw):
  cfg = dict(vocab_size=VOCAB, emb_dim=32, num_heads=4, num_layers=2, sgu_kernel_size=4, head_qk_dim=8)
  cfg.update(kw)
  module = GPTDecoder(GPTConfig(**cfg))
  ours = models.DecoderOnlyLM(module)
  shapes = {"decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
  params = flax.core.unfreeze(ours.get_initial_variables(jax.random.PRNGKey(0), shapes))["params"]
  params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"] * 20.0
  return module, ours, params


def prefix_batch(prompts, total):
  tokens = np.zeros((len(prompts), total), np.int32)
  causal = np.zeros((len(prompts), total), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, 1 : len(p) + 1] = p
    causal[b, : len(p) + 1] = 1
  return {
    "decoder_input_tokens": jnp.asarray(tokens),
    "decoder_target_tokens": jnp.asarray(tokens),
    "decoder_causal_attention": jnp.asarray(causal),
    "decoder_loss_weights": jnp.asarray(tokens > 0),
  }


PROMPTS = [[5, 7, 9], [3, 4, 5, 6, 7, 8, 9]]


@pytest.mark.parametrize(
  "features",
  [
    dict(),
    dict(use_static_sgu=True, head_qk_trick=True, block_type="sequential"),
    dict(scan_layers=True),
    dict(scan_layers=True, head_qk_trick=True, position_embedding="learned"),
  ],
  ids=["alibi-parallel", "sgu-headqk-seq", "scan", "scan-headqk-learned"],
)
def test_t5x_decoder_only_model_with_t5x_and_our_decoders(features):
  """t5x.models.DecoderOnlyModel runs our module; T5X's and our decoders give the same greedy and 1-beam output."""
  module, ours, params = tiny(**features)
  batch = prefix_batch(PROMPTS, 20)

  def t5x_model(decode_fn):
    return t5x_models.DecoderOnlyModel(module=module, vocabulary=None, optimizer_def=None, decode_fn=decode_fn)

  class _Vocab:  # DecoderOnlyModel reads output_vocabulary.eos_id
    eos_id = -1

  results = {}
  for name, fn in [("t5x_sample", t5x_decoding.temperature_sample), ("our_sample", decoding.temperature_sample)]:
    m = t5x_model(fn)
    m._output_vocabulary = _Vocab()  # pylint: disable=protected-access
    results[name] = np.asarray(
      m.predict_batch_with_aux(params, batch, decoder_params={"temperature": 0.0, "topk": 0})[0]
    )
  for name, fn in [("t5x_beam", t5x_decoding.beam_search), ("our_beam", decoding.beam_search)]:
    m = t5x_model(fn)
    m._output_vocabulary = _Vocab()  # pylint: disable=protected-access
    results[name] = np.asarray(m.predict_batch_with_aux(params, batch, num_decodes=1, decoder_params={"alpha": 0.0})[0])
  greedy = generate.Generator(ours, params).generate(PROMPTS, max_length=20, eos_id=-1)
  for b, p in enumerate(PROMPTS):
    want = greedy[b, len(p) :]
    for name, got in results.items():
      np.testing.assert_array_equal(got[b, : len(want)], want, err_msg=name)
  # T5X's loss on our module equals ours (T5X sums; ours averages over the weighted tokens).
  t5x_loss, _ = t5x_model(None).loss_fn(params, batch, None)
  our_loss, _ = ours.loss_fn(params, batch, None)
  np.testing.assert_allclose(float(t5x_loss) / float(batch["decoder_loss_weights"].sum()), float(our_loss), rtol=1e-4)


def test_same_arguments_drive_both_decoders():
  """One set of T5X-named keyword arguments, passed unchanged to both implementations."""
  module, ours, params = tiny()
  total = 16
  batch = prefix_batch(PROMPTS, total)
  inputs = batch["decoder_input_tokens"] * batch["decoder_causal_attention"]
  lengths = jnp.sum(batch["decoder_causal_attention"], axis=1) - 1
  kw = dict(
    eos_id=-1,
    decode_rng=jax.random.PRNGKey(0),
    num_decodes=3,
    temperature=0.0,
    topk=0,
    topp=0.0,
    cache_offset=0,
    initial_index=lengths,
    max_decode_steps=6,
    rescale_log_probs=False,
  )
  outs = []
  for fn in (t5x_decoding.temperature_sample, decoding.temperature_sample):
    cache = ours.init_cache(params, 2, total)
    _, cache = ours.prefill_cache(params, cache, inputs, lengths)
    outs.append(fn(inputs, cache, ours.make_tokens_to_logits(params, total), **kw))
  np.testing.assert_array_equal(np.asarray(outs[0][0]), np.asarray(outs[1][0]))
  np.testing.assert_allclose(np.asarray(outs[0][1]), np.asarray(outs[1][1]), rtol=1e-5)


def _run(args, timeout=900):
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["XLA_FLAGS"] = ""  # one CPU device, as a user's run would have
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  res = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert res.returncode == 0, res.stderr[-4000:]
  return res


def _check_t5x_eval_matches_ours(checkpoint, ours, tiny_arch, tmp_path):
  """`python -m t5x.eval --gin_file=t5x/eval_quickstart.gin` reports the pydocs score metrics, and they equal
  gpt_plugin.eval's (context 128, non-overlapping) on the same checkpoint and the same tokens: the validation
  rows are 1024 tokens (8 windows of 128) except the last, whose partial window both leave out."""
  length = 128
  windows = eval_lib.token_stream_from_task("pydocs", "validation").size // length
  out_dir = tmp_path / "t5x_eval"
  _run(
    [
      "-m",
      "t5x.eval",
      f"--gin_search_paths={REPO}/gin",
      "--gin_file=t5x/eval_quickstart.gin",
      f"--gin.CHECKPOINT_PATH='{checkpoint}'",
      f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
      f"--gin.seqio.Evaluator.num_examples={windows}",
    ]
    + tiny_arch
  )
  lines = (out_dir / "inference_eval" / "pydocs-metrics.jsonl").read_text().splitlines()
  t5x_metrics = json.loads(lines[-1])
  assert t5x_metrics["num_tokens"] == windows * length
  assert_eval_runner_agrees(t5x_metrics, ours, checkpoint, length, windows * length, tmp_path / "our_eval")


def test_t5x_train_infer_eval_and_checkpoints_both_ways(tmp_path):
  """python -m t5x.train / t5x.infer / t5x.eval with gin/t5x, T5X checkpoint -> our loader and eval runner,
  ours -> T5X infer."""
  tiny_arch = ["--gin.network.GPTConfig.emb_dim=32", "--gin.network.GPTConfig.num_layers=2"]
  model_dir = tmp_path / "t5x_model"
  _run(
    [
      "-m",
      "t5x.train",
      f"--gin_search_paths={REPO}/gin",
      "--gin_file=t5x/pretrain_quickstart.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.TRAIN_STEPS=4",  # < WARMUP_STEPS (30 in t5x/model.gin): the schedule clamps, no optax error
      "--gin.BATCH_SIZE=4",
      "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
      "--gin.CHECKPOINT_PERIOD=4",
      "--gin.EVAL_PERIOD=4",
    ]
    + tiny_arch
  )
  assert (model_dir / "checkpoint_4" / "state").is_dir()
  infer_common = [
    f"--gin_search_paths={REPO}/gin",
    "--gin_file=t5x/infer_quickstart.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
  ] + tiny_arch
  for extra, out in (([], "sample"), (["--gin_file=t5x/beam_search.gin"], "beam")):
    _run(
      ["-m", "t5x.infer"]
      + infer_common[:2]
      + extra
      + infer_common[2:]
      + [f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_4'}'", f"--gin.INFER_OUTPUT_DIR='{tmp_path / out}'"]
    )
    lines = open(tmp_path / out / "pydocs_prompts-predict.jsonl-00000-of-00001").readlines()
    assert lines and "prediction" in json.loads(lines[0])
  # T5X checkpoint -> our runners' loader.
  module = GPTDecoder(GPTConfig(vocab_size=8192, emb_dim=32, num_heads=4, num_layers=2))
  ours = models.DecoderOnlyLM(module, vocabulary=sample_task.pydocs_vocabulary())
  params = params_io.load_model_params(str(model_dir), ours)
  _check_t5x_eval_matches_ours(model_dir / "checkpoint_4", ours, tiny_arch, tmp_path)
  # Ours -> T5X layout -> t5x.infer.
  step_dir = t5x_compat.to_t5x_checkpoint(str(model_dir / "checkpoint_4"), str(tmp_path / "roundtrip"), step=7)
  jax.tree.map(np.testing.assert_array_equal, params_io.load_model_params(step_dir, ours), params)
  _run(
    ["-m", "t5x.infer"]
    + infer_common
    + [f"--gin.CHECKPOINT_PATH='{step_dir}'", f"--gin.INFER_OUTPUT_DIR='{tmp_path / 'ours'}'"]
  )
  assert (tmp_path / "ours" / "pydocs_prompts-predict.jsonl-00000-of-00001").exists()
