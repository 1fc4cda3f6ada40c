"""Infer and eval runners (gpt_plugin/inference/*): checkpoint loading, JSONL predictions, perplexity at several
context lengths with JSON + PNG, gin files, bad input."""

import json
import os
import subprocess
import sys

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt_plugin import generate, models, params_io
from gpt_plugin.inference import eval_lib, infer_lib
from gpt_plugin.network import GPTConfig, GPTDecoder
from gpt_plugin import gin_utils
from gpt_plugin.training import checkpointing, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vocab():
  import tasks  # pylint: disable=import-outside-toplevel

  return tasks.pydocs_vocabulary()


def make_model(**overrides):
  cfg = dict(vocab_size=8192, emb_dim=32, num_heads=4, num_layers=2, max_position_embeddings=64)
  cfg.update(overrides)
  return models.DecoderOnlyLM(GPTDecoder(GPTConfig(**cfg)), vocabulary=_vocab())


def init(model, seed=0):
  shapes = {"decoder_input_tokens": (1, 8), "decoder_target_tokens": (1, 8)}
  return flax.core.unfreeze(model.get_initial_variables(jax.random.PRNGKey(seed), shapes))["params"]


def save_training_checkpoint(model_dir, params, step=3):
  """A checkpoint exactly as gpt_plugin.train writes it (TrainState with AdamW slots, data and meta items)."""
  tx = optax.adamw(1e-3)
  state = train_step.create_train_state(params, tx, jax.random.PRNGKey(0))
  ckpt = checkpointing.Checkpointer(model_dir, async_save=False)
  ckpt.save(step, state, {}, {"params": checkpointing.params_shape_info(params)}, force=True)
  ckpt.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  model = make_model()
  params = init(model)
  save_training_checkpoint(str(root / "alibi"), params)
  learned = make_model(position_embedding="learned", max_position_embeddings=16)
  lparams = init(learned, seed=1)
  save_training_checkpoint(str(root / "learned"), lparams)
  return {"root": root, "model": model, "params": params, "learned": learned, "lparams": lparams}


def test_load_params_from_training_dir_step_dir_and_export(trained, tmp_path):
  model, params = trained["model"], trained["params"]
  for path in (trained["root"] / "alibi", trained["root"] / "alibi" / "checkpoint_3"):
    got = params_io.load_model_params(str(path), model)
    jax.tree.map(np.testing.assert_array_equal, got, params)
  export = checkpointing.export_params(str(trained["root"] / "alibi"), str(tmp_path / "export"))
  for path in (export, os.path.join(export, "params.msgpack")):
    got = params_io.load_model_params(path, model)
    jax.tree.map(np.testing.assert_array_equal, got, params)


def test_checkpoint_errors_name_the_path(trained):
  missing = str(trained["root"] / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    params_io.load_model_params(missing, trained["model"])
  other = make_model(emb_dim=48)
  path = str(trained["root"] / "alibi")
  with pytest.raises(params_io.ParamsMismatchError, match=r"alibi.*holds another model"):
    params_io.load_model_params(path, other)
  with pytest.raises(params_io.ParamsMismatchError, match="position_embedder"):
    params_io.load_model_params(str(trained["root"] / "learned"), trained["model"])


def test_infer_from_text_file_and_jsonl(trained, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("def main(\n\nimport os\nThe for statement\n")
  out = infer_lib.infer(
    model=trained["model"],
    checkpoint_path=str(trained["root"] / "alibi"),
    output_dir=str(tmp_path / "out"),
    input_file=str(prompts),
    dataset_cfg=infer_lib.DatasetConfig(task_feature_lengths={"inputs": 8, "targets": 6}, batch_size=2),
    decoder_params={"temperature": 0.0, "topk": 0},
    console=False,
  )
  assert out.endswith("prompts-predict.jsonl-00000-of-00001")
  rows = [json.loads(l) for l in open(out)]
  assert [r["inputs"] for r in rows] == ["def main(", "import os", "The for statement"]
  assert all(isinstance(r["prediction"], str) and np.isfinite(r["score"]) for r in rows)
  # Same as the Python API's greedy continuation.
  gen = generate.Generator(trained["model"], trained["params"])
  want = gen.generate_text(["import os"], max_new_tokens=14 - len(_vocab().encode("import os")))
  assert rows[1]["prediction"] == want[0]
  jsonl = tmp_path / "p.jsonl"
  jsonl.write_text(json.dumps({"inputs": "class A:", "targets": "pass"}) + "\n")
  out = infer_lib.infer(
    model=trained["model"],
    checkpoint_path=str(trained["root"] / "alibi"),
    output_dir=str(tmp_path / "out2"),
    input_file=str(jsonl),
    dataset_cfg=infer_lib.DatasetConfig(task_feature_lengths={"inputs": 8, "targets": 4}),
    console=False,
  )
  row = json.loads(open(out).readline())
  assert row["inputs"] == "class A:" and row["targets"] == "pass"


def test_infer_bad_prompts(trained, tmp_path):
  long_file = tmp_path / "long.txt"
  long_file.write_text("one two three four five six seven eight nine ten eleven\n")
  kw = dict(
    model=trained["model"],
    checkpoint_path=str(trained["root"] / "alibi"),
    output_dir=str(tmp_path),
    dataset_cfg=infer_lib.DatasetConfig(task_feature_lengths={"inputs": 4, "targets": 4}),
    console=False,
  )
  with pytest.raises(ValueError, match=r"long.txt:1: prompt of \d+ tokens is longer than the prompt length 4"):
    infer_lib.infer(input_file=str(long_file), **kw)
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    infer_lib.infer(input_file=str(tmp_path / "missing.txt"), **kw)


def test_infer_from_seqio_task_prompts(trained, tmp_path):
  out = infer_lib.infer(
    model=trained["model"],
    checkpoint_path=str(trained["root"] / "alibi"),
    output_dir=str(tmp_path),
    max_examples=3,
    dataset_cfg=infer_lib.DatasetConfig(
      mixture_or_task_name="pydocs", task_feature_lengths={"inputs": 12, "targets": 4}, batch_size=4
    ),
    console=False,
  )
  rows = [json.loads(l) for l in open(out)]
  assert len(rows) == 3 and all(r["inputs"] and "targets" in r for r in rows)


def test_interactive_prints_prompt_and_continuation(trained):
  lines = []
  res = infer_lib.interactive(
    ["def main("],
    model=trained["model"],
    checkpoint_path=str(trained["root"] / "alibi"),
    max_new_tokens=5,
    num_samples=2,
    print_fn=lines.append,
  )
  assert len(res[0]) == 2 and lines[0].startswith("def main(")


def test_eval_alibi_and_learned_control_write_json_and_png(trained, tmp_path):
  text = tmp_path / "eval.txt"
  text.write_text(("The for statement iterates over the items of any sequence. " * 40))
  common = dict(
    train_length=8,
    context_multipliers=(1, 2, 4),
    input_file=str(text),
    max_eval_tokens=256,
    sliding_divisor=2,
    console=False,
  )
  alibi = eval_lib.evaluate(
    model=trained["model"], checkpoint_path=str(trained["root"] / "alibi"), output_dir=str(tmp_path / "a"), **common
  )
  rows = {(r["mode"], r["context"]): r for r in alibi["results"]}
  assert set(rows) == {(m, c) for m in ("nonoverlapping", "sliding") for c in (8, 16, 32)}
  assert all(np.isfinite(r["perplexity"]) and r["bits_per_byte"] > 0 for r in rows.values())
  assert {r["tokens"] for r in rows.values()} == {float(alibi["num_tokens"])}  # same tokens scored everywhere
  learned = eval_lib.evaluate(
    model=trained["learned"],
    checkpoint_path=str(trained["root"] / "learned"),
    output_dir=str(tmp_path / "l"),
    compare_results=[alibi["json_path"]],
    **common,
  )
  lrows = {(r["mode"], r["context"]): r for r in learned["results"]}
  assert "max_position_embeddings=16" in lrows[("nonoverlapping", 32)]["error"]
  assert "perplexity" in lrows[("nonoverlapping", 16)]
  for res in (alibi, learned):
    assert json.load(open(res["json_path"]))["results"]
    assert open(res["png_path"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_matches_direct_loss(trained):
  """Non-overlapping perplexity equals exp(mean token NLL) computed by hand."""
  model, params = trained["model"], trained["params"]
  stream = np.random.RandomState(0).randint(2, 8192, size=64).astype(np.int32)
  got = eval_lib.score_stream(model, params, stream, 16, "nonoverlapping", batch_tokens=32)
  windows = stream.reshape(4, 16)
  inputs = np.pad(windows, ((0, 0), (1, 0)))[:, :-1]
  logits = model.module.apply({"params": params}, jnp.asarray(inputs), None, enable_dropout=False)
  nll = -np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(windows)[..., None], -1)).sum()
  np.testing.assert_allclose(got["nll"], nll, rtol=1e-4)
  assert got["tokens"] == 64
  sliding = eval_lib.score_stream(model, params, stream, 16, "sliding", stride=4, batch_tokens=32)
  assert sliding["tokens"] == 64


def test_gin_files_parse_and_bind(trained, tmp_path):
  """runs/infer.gin and runs/eval.gin with a model gin; the bound runners work end to end."""
  bindings = [
    "network.GPTConfig.emb_dim = 32",
    "network.GPTConfig.num_heads = 4",
    "network.GPTConfig.num_layers = 2",
    "VOCAB_SIZE = 8192",
    "VOCABULARY = @tasks.pydocs_vocabulary()",
    "ACTIVATION_DTYPE = 'float32'",
    f"CHECKPOINT_PATH = '{trained['root'] / 'alibi'}'",
    f"INFER_OUTPUT_DIR = '{tmp_path / 'infer'}'",
    "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
    "MIXTURE_OR_TASK_NAME = 'pydocs'",
    "MAX_EXAMPLES = 2",
    "DECODER_PARAMS = {'temperature': 0.0}",
  ]
  try:
    gin_utils.parse_gin(["models/gpt_common.gin", "runs/infer.gin"], bindings, finalize=False)
    path = gin.get_configurable(infer_lib.infer)(console=False)
    assert len(open(path).readlines()) == 2
    gin_utils.parse_gin(
      ["models/gpt_common.gin", "runs/eval.gin"],
      bindings[:7]
      + [
        "TRAIN_LENGTH = 8",
        "MIXTURE_OR_TASK_NAME = 'pydocs'",
        "CONTEXT_MULTIPLIERS = [1, 2]",
        "MAX_EVAL_TOKENS = 64",
        f"EVAL_OUTPUT_DIR = '{tmp_path / 'eval'}'",
      ],
      finalize=False,
    )
    res = gin.get_configurable(eval_lib.evaluate)(console=False)
    assert len(res["results"]) == 4
    for f in ("runs/infer_quickstart.gin", "runs/eval_quickstart.gin"):
      gin_utils.parse_gin([f], [f"CHECKPOINT_PATH = '{tmp_path}'"], finalize=False)
  finally:
    gin.clear_config()


def test_cli_interactive_and_bad_checkpoint(trained):
  base = [
    sys.executable,
    "-m",
    "gpt_plugin.infer",
    "--gin_file=models/gpt_common.gin",
    "--gin_file=runs/infer.gin",
    "--gin.network.GPTConfig.emb_dim=32",
    "--gin.network.GPTConfig.num_heads=4",
    "--gin.network.GPTConfig.num_layers=2",
    "--gin.VOCAB_SIZE=8192",
    "--gin.VOCABULARY=@tasks.pydocs_vocabulary()",
    "--gin.ACTIVATION_DTYPE='float32'",
    "--gin.INFER_OUTPUT_DIR='/tmp/unused'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
    "--prompt=def main(",
    "--max_new_tokens=4",
    "--greedy",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  ok = subprocess.run(
    base + [f"--gin.CHECKPOINT_PATH='{trained['root'] / 'alibi'}'"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert ok.stdout.strip().startswith("def main(")
  bad = subprocess.run(
    base + ["--gin.CHECKPOINT_PATH='/nonexistent/ckpt'"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert bad.returncode == 2 and "/nonexistent/ckpt" in bad.stderr


def test_eval_stream_spreads_over_the_whole_split_not_its_first_documents():
  examples = [np.full(10, i, np.int32) for i in range(100)]  # example i holds tokens i
  picked = eval_lib.spread_examples(examples, 95)
  ids = [int(e[0]) for e in picked]
  assert sum(e.size for e in picked) >= 95 and ids == sorted(ids) and len(set(ids)) == len(ids)
  assert ids[0] == 0 and ids[-1] == 99 and max(np.diff(ids)) <= 12  # from the first to the last example, evenly
  assert eval_lib.spread_examples(examples, 5000) == examples  # a small split: all of it
