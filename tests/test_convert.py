"""Converters without torch: Little-GPT presets, mapping errors, the torch-free .pth writer/reader, depth
expansion, checkpoint averaging and the CLI (tests against a PyTorch reference are in test_convert_torch.py)."""

import collections
import dataclasses
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_plugin import torch_archive
from gpt_plugin.convert import __main__ as cli
from gpt_plugin.convert import averaging, depth_expansion, littlegpt, params_io
from gpt_plugin.network import GPTConfig, GPTDecoder

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
TINY = GPTConfig(
  vocab_size=256,
  emb_dim=32,
  num_heads=8,
  num_layers=3,
  block_type="parallel",
  position_embedding="alibi",
  gelu_approximate=False,
  layer_norm_epsilon=1e-5,
)


def load_config(preset):
  gin.clear_config()
  gin.add_config_file_search_path(str(GIN_DIR))
  gin.parse_config_files_and_bindings(
    [str(GIN_DIR / "models" / f"{preset}.gin")], [], finalize_config=False
  )  # a locked config breaks later gin imports
  return gin.query_parameter("%MODEL").scoped_configurable_fn().module.config


def random_params(cfg, seed=0):
  params = GPTDecoder(cfg).init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32), enable_dropout=False)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 1000))
  # random everything (LayerNorm scales and biases included)
  return jax.tree.map(lambda x: np.asarray(x + 0.1 * jax.random.normal(next(keys), x.shape)), params["params"])


# ------------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize(
  "preset,millions,d,layers,embedding_norm",
  [
    ("littlegpt_127m", 127.08, 1024, 6, False),
    ("littlegpt_303m", 303.90, 1536, 8, False),
    ("littlegpt_1b", 1009.41, 2048, 18, True),
  ],
)
def test_littlegpt_presets(preset, millions, d, layers, embedding_norm):
  cfg = load_config(preset)
  assert (cfg.emb_dim, cfg.num_layers, cfg.num_heads, cfg.vocab_size) == (d, layers, 8, 50304)
  assert (
    cfg.block_type,
    cfg.position_embedding,
    cfg.gelu_approximate,
    cfg.layer_norm_epsilon,
    cfg.embedding_layer_norm,
  ) == ("parallel", "alibi", False, 1e-5, embedding_norm)
  assert cfg.num_params() / 1e6 == pytest.approx(millions, abs=0.01)
  shapes = littlegpt.abstract_params(cfg)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == cfg.num_params()
  # Little-GPT's state dict (vocab 50257) has exactly our params minus the 47 padding rows.
  torch_shapes = littlegpt.torch_shapes(cfg)
  assert sum(int(np.prod(s)) for s in torch_shapes.values()) == cfg.num_params() - 47 * d
  # a preset loads the state dict inferred from the same shapes (what from-torch without --gin_file does)
  fake = {k: np.broadcast_to(np.float32(0), s) for k, s in torch_shapes.items()}
  inferred = littlegpt.infer_config(fake, dtype=cfg.dtype)
  assert inferred == cfg


# ------------------------------------------------------------------------------------------------ mapping
def test_round_trip_both_layouts_without_torch():
  params = random_params(TINY)
  sd = littlegpt.to_torch(params, TINY, vocab_size=250, num_ctx=16)
  assert sd["lm_head.weight"] is sd["wte.weight"] and sd["wte.weight"].shape == (250, 32)
  assert sd["blocks.0.attn.mask"].shape == (1, 1, 16, 16) and sd["blocks.0.attn.slopes"].shape == (8,)
  back = littlegpt.from_torch(sd, TINY)
  flat, flat_back = littlegpt.flatten(params), littlegpt.flatten(back)
  assert set(flat) == set(flat_back)
  for k in flat:
    if k == "token_embedder/embedding":
      assert np.array_equal(flat_back[k][:250], flat[k][:250]) and not flat_back[k][250:].any()
    else:
      assert np.array_equal(flat_back[k], flat[k]), k
  scanned = littlegpt.from_torch(sd, dataclasses.replace(TINY, scan_layers=True))
  assert scanned["layers"]["attention"]["qkv"]["kernel"].shape == (3, 32, 3, 32)
  sd2 = littlegpt.to_torch(scanned, TINY, vocab_size=250, num_ctx=16)
  assert all(np.array_equal(sd[k], sd2[k]) for k in sd)
  # the scanned model computes the same logits
  x = jnp.asarray(np.random.RandomState(0).randint(0, 250, (1, 9)))
  a = GPTDecoder(TINY).apply({"params": back}, x, enable_dropout=False)
  b = GPTDecoder(dataclasses.replace(TINY, scan_layers=True)).apply({"params": scanned}, x, enable_dropout=False)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_mismatched_state_dict_lists_every_problem():
  sd = dict(littlegpt.to_torch(random_params(TINY), TINY, vocab_size=250, num_ctx=16))
  del sd["blocks.1.mlp.fc1.bias"], sd["norm.weight"]
  sd["blocks.0.adapter.fc.weight"] = np.zeros((4, 32), np.float32)
  sd["blocks.3.ln1.weight"] = np.ones(32, np.float32)
  sd["blocks.2.attn.query.weight"] = np.zeros((32, 16), np.float32)
  sd["blocks.2.attn.key.weight"] = np.zeros((32, 32), np.int8)
  with pytest.raises(littlegpt.ConversionError) as e:
    littlegpt.from_torch(sd, TINY)
  msg = str(e.value)
  for needle in (
    "6 problems",
    "wrong dtype: blocks.2.attn.key.weight is int8",
    "missing: blocks.1.mlp.fc1.bias",
    "missing: norm.weight",
    "unexpected: blocks.0.adapter.fc.weight",
    "unexpected: blocks.3.ln1.weight",
    "wrong shape: blocks.2.attn.query.weight: (32, 16), expected (32, 32)",
  ):
    assert needle in msg, (needle, msg)


def test_wrong_head_count_untied_head_and_oversized_vocab_are_named():
  sd = dict(littlegpt.to_torch(random_params(TINY), TINY, vocab_size=250, num_ctx=16))
  with pytest.raises(littlegpt.ConversionError, match="num_heads=4"):
    littlegpt.from_torch(sd, dataclasses.replace(TINY, num_heads=4))
  sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
  with pytest.raises(littlegpt.ConversionError, match="untied: lm_head.weight"):
    littlegpt.from_torch(sd, TINY)
  del sd["lm_head.weight"]
  with pytest.raises(littlegpt.ConversionError, match="more than the model's vocab_size=128"):
    littlegpt.from_torch(sd, dataclasses.replace(TINY, vocab_size=128))
  # missing embedding LayerNorm of a 1B*-style model; sequential model's ln2
  with pytest.raises(littlegpt.ConversionError, match="missing: wte.norm.weight"):
    littlegpt.from_torch(sd, dataclasses.replace(TINY, embedding_layer_norm=True))
  with pytest.raises(littlegpt.ConversionError, match="missing: blocks.0.ln2.weight"):
    littlegpt.from_torch(sd, dataclasses.replace(TINY, block_type="sequential"))


def test_export_checks_params_against_the_model():
  params = random_params(TINY)
  del params["layers_2"]["mlp"]["wo"]
  params["layers_0"]["attention"]["out"]["kernel"] = np.zeros((32, 8), np.float32)
  with pytest.raises(littlegpt.ConversionError) as e:
    littlegpt.to_torch(params, TINY)
  assert "missing: layers_2/mlp/wo/kernel" in str(e.value)
  assert "wrong shape: layers_0/attention/out/kernel: (32, 8), model expects (32, 32)" in str(e.value)


def test_wrappers_and_frozen_stable_embedding_names_are_accepted():
  cfg = dataclasses.replace(TINY, embedding_layer_norm=True)
  sd = littlegpt.to_torch(random_params(cfg), cfg, vocab_size=250, buffers=False, lm_head=False)
  wrapped = {"module." + k: v for k, v in sd.items()}
  wrapped["module.wte.ln_weight"] = wrapped.pop("module.wte.norm.weight")
  wrapped["module.wte.ln_bias"] = wrapped.pop("module.wte.norm.bias")
  params = littlegpt.from_torch(wrapped, cfg)
  assert np.array_equal(params["embedding_norm"]["scale"], sd["wte.norm.weight"])


# ------------------------------------------------------------------------------------------------ .pth files
def test_pth_writer_and_reader_round_trip(tmp_path):
  sd = littlegpt.to_torch(random_params(TINY), TINY, vocab_size=250, num_ctx=16)
  torch_archive.save_pth(
    {"state_dict": sd, "step": 3, "best_val": 2.5, "run_id": "x", "scaler": None}, tmp_path / "a.pth"
  )
  obj = torch_archive.load_pth(tmp_path / "a.pth")
  assert obj["step"] == 3 and obj["best_val"] == 2.5 and obj["scaler"] is None
  assert obj["state_dict"]["wte.weight"].storage is obj["state_dict"]["lm_head.weight"].storage  # still tied
  read = torch_archive.read_state_dict(tmp_path / "a.pth")
  assert list(read) == list(sd) and all(np.array_equal(read[k], sd[k]) and read[k].dtype == sd[k].dtype for k in sd)
  with pytest.raises(torch_archive.TorchFileError, match="not a torch.save zip"):
    (tmp_path / "b.pth").write_bytes(b"hello world")
    torch_archive.read_state_dict(tmp_path / "b.pth")
  torch_archive.save_pth({"a": [1, 2]}, tmp_path / "c.pth")
  with pytest.raises(torch_archive.TorchFileError, match="neither a state dict"):
    torch_archive.read_state_dict(tmp_path / "c.pth")


# ------------------------------------------------------------------------------------------------ depth
def test_depth_map_reproduces_the_original_18_to_24_table():
  table = {
    0: [0, 1],
    1: [2],
    2: [3],
    3: [4, 5],
    4: [6],
    5: [7],
    6: [8, 9],
    7: [10],
    8: [11],
    9: [12, 13],
    10: [14],
    11: [15],
    12: [16, 17],
    13: [18],
    14: [19],
    15: [20, 21],
    16: [22],
    17: [23],
  }
  assert depth_expansion.inverse_map(18, 24) == table
  assert depth_expansion.depth_map(18, 24) == [int(np.floor(i / 24 * 18)) for i in range(24)]
  assert depth_expansion.depth_map(6, 12) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
  assert depth_expansion.depth_map(4, 4) == [0, 1, 2, 3]
  for old, new in [(3, 7), (12, 20), (8, 8), (5, 16)]:  # every old block used, in order, contiguous runs
    m = depth_expansion.depth_map(old, new)
    assert sorted(set(m)) == list(range(old)) and m == sorted(m)


@pytest.mark.parametrize("scan_in,scan_out", [(False, False), (True, True), (False, True)])
def test_expand_depth(scan_in, scan_out):
  src = random_params(dataclasses.replace(TINY, scan_layers=scan_in))
  out = depth_expansion.expand_depth(src, 5, scan_layers=scan_out)
  target = dataclasses.replace(TINY, num_layers=5, scan_layers=scan_out)
  littlegpt.check_params(out, target)
  old_layers, new_layers = littlegpt.layer_list(src), littlegpt.layer_list(out)
  for i, k in enumerate(depth_expansion.depth_map(3, 5)):
    for a, b in zip(jax.tree.leaves(new_layers[i]), jax.tree.leaves(old_layers[k])):
      assert np.array_equal(a, b)
  assert np.array_equal(out["token_embedder"]["embedding"], src["token_embedder"]["embedding"])
  assert np.array_equal(out["final_norm"]["scale"], src["final_norm"]["scale"])
  if not scan_out:  # duplicated blocks are independent copies
    out["layers_0"]["mlp"]["wi"]["kernel"][0, 0] += 1.0
    assert not np.array_equal(out["layers_0"]["mlp"]["wi"]["kernel"], out["layers_1"]["mlp"]["wi"]["kernel"])
  logits = GPTDecoder(target).apply({"params": out}, jnp.ones((1, 4), jnp.int32), enable_dropout=False)
  assert np.all(np.isfinite(logits))


# ------------------------------------------------------------------------------------------------ averaging
def _model_dir(path, steps):
  from gpt_plugin.training import checkpointing  # pylint: disable=import-outside-toplevel

  ckpt = checkpointing.Checkpointer(str(path), keep=None, async_save=False)
  trees = {}
  for s in steps:
    params = random_params(TINY, seed=s)
    trees[s] = params
    state = {
      "step": jnp.asarray(s),
      "params": jax.tree.map(jnp.asarray, params),
      "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)},
    }
    ckpt.save(s, state, {}, {"params": {}})
  ckpt.close()
  return trees


def test_average_last_k_checkpoints(tmp_path):
  trees = _model_dir(tmp_path / "run", [100, 200, 300, 400])
  params, steps = averaging.average_checkpoints(str(tmp_path / "run"), last=3)
  assert steps == [200, 300, 400]
  expected = averaging.average_trees([trees[s] for s in steps])
  for a, b, c in zip(
    jax.tree.leaves(params),
    jax.tree.leaves(expected),
    jax.tree.leaves(jax.tree.map(lambda *x: sum(np.float64(y) for y in x) / 3, *[trees[s] for s in steps])),
  ):
    assert a.dtype == np.float32 and np.array_equal(a, b) and np.allclose(a, c, atol=1e-7)
  with pytest.raises(ValueError, match="cannot average the last 9"):
    averaging.average_checkpoints(str(tmp_path / "run"), last=9)
  with pytest.raises(FileNotFoundError, match="steps \\[150\\]"):
    averaging.average_checkpoints(str(tmp_path / "run"), steps=[150, 200])
  # the CLI: average -> expand-depth -> to-torch, each reading the previous output
  out = tmp_path / "avg"
  assert cli.main(["average", f"--model_dir={tmp_path / 'run'}", "--last=2", f"--output={out}", "--msgpack"]) == 0
  avg, _ = params_io.load_params(str(out))
  mean2 = averaging.average_trees([trees[300], trees[400]])
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(avg), jax.tree.leaves(mean2)))
  from_msgpack, _ = params_io.load_params(str(out / "params.msgpack"))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(avg), jax.tree.leaves(from_msgpack)))
  deep = tmp_path / "deep"
  assert cli.main(["expand-depth", f"--input={out}", "--num_layers=4", "--scan_layers", f"--output={deep}"]) == 0
  expanded, _ = params_io.load_params(str(deep))
  assert expanded["layers"]["input_norm"]["scale"].shape == (4, 32)
  assert params_io.read_info(str(deep))["depth_expansion"]["old_to_new"] == {"0": [0, 1], "1": [2], "2": [3]}
  pth = tmp_path / "deep.pth.tar"
  cfg_flags = [
    "--gin_file=models/littlegpt_127m.gin",
    "--gin.VOCAB_SIZE=256",
    "--gin.network.GPTConfig.emb_dim=32",
    "--gin.network.GPTConfig.num_layers=4",
  ]
  assert (
    cli.main(["to-torch", f"--input={deep}", f"--output={pth}", "--vocab_size=250", "--num_ctx=8"] + cfg_flags) == 0
  )
  sd = torch_archive.read_state_dict(pth)
  assert sd["wte.weight"].shape == (250, 32) and "blocks.3.mlp.fc1.weight" in sd
  assert np.array_equal(sd["blocks.1.mlp.fc1.weight"], expanded["layers"]["mlp"]["wi"]["kernel"][0].T)
  # and the round trip back in
  assert cli.main(["from-torch", f"--input={pth}", f"--output={tmp_path / 'again'}"] + cfg_flags) == 0


def test_cli_reports_mismatches_with_status_2(tmp_path, capsys):
  sd = littlegpt.to_torch(random_params(TINY), TINY, vocab_size=250, num_ctx=16)
  sd = collections.OrderedDict((k, v) for k, v in sd.items() if k != "blocks.0.ln1.bias")
  torch_archive.save_pth(sd, tmp_path / "broken.pth.tar")
  status = cli.main(
    [
      "from-torch",
      f"--input={tmp_path / 'broken.pth.tar'}",
      f"--output={tmp_path / 'o'}",
      "--gin_file=models/littlegpt_127m.gin",
    ]
  )
  err = capsys.readouterr().err
  assert status == 2 and "missing: blocks.0.ln1.bias" in err and "wrong shape: wte.weight" in err
