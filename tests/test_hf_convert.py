"""Hugging Face GPT-2 / BLOOM / MPT checkpoints in and out (`gpt_plugin.convert.hf_*`), against transformers itself.

Tiny randomly initialised models built from configs in this file (no hub, no download); every weight, LayerNorm
scales included, is redrawn so that a mapping mistake cannot hide behind an init of ones or zeros. transformers and
torch run in the test (CPU, float32); both are test dependencies (skipped with a reason without them), the package
itself never imports them.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (test extra: pip install -e '.[torch]')")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
from transformers.models.bloom.modeling_bloom import build_alibi_tensor  # noqa: E402
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor  # noqa: E402

from gpt_plugin import generate, models, params_io  # noqa: E402
from gpt_plugin.convert import hf_export, hf_import, hf_io  # noqa: E402
from gpt_plugin.convert.__main__ import main as convert_main  # noqa: E402
from gpt_plugin.layers.alibi import alibi_slopes  # noqa: E402
from gpt_plugin.network import GPTConfig, GPTDecoder  # noqa: E402

VOCAB = 300
MPT_MAX_SEQ_LEN = 32
TOL = 1e-4
PARAGRAPH = (
  "The for statement in Python differs a bit from what you may be used to in C or Pascal. Rather than always\n"
  "iterating over an arithmetic progression of numbers, it iterates over the items of any sequence (a list or a\n"
  "string), in the order that they appear:  words = ['cat', 'window', 'défenestrate'] -> 3 items, naïve café 🐍."
)
NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def _hf_configs():
  return {
    "gpt2": transformers.GPT2Config(
      vocab_size=VOCAB,
      n_embd=32,
      n_layer=2,
      n_head=4,
      n_positions=96,
      resid_pdrop=0.0,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
      **NO_TOKENS,
    ),  # fmt: skip
    "bloom": transformers.BloomConfig(vocab_size=VOCAB, hidden_size=48, n_layer=2, n_head=6, **NO_TOKENS),
    "mpt": transformers.MptConfig(
      vocab_size=VOCAB,
      d_model=48,
      n_heads=6,
      n_layers=2,
      max_seq_len=MPT_MAX_SEQ_LEN,
      attn_config={"clip_qkv": 0.4},
      **NO_TOKENS,
    ),  # fmt: skip
  }


def _randomize(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      is_norm_scale = p.ndim == 1 and name.endswith("weight")
      p.copy_(1.0 + 0.2 * noise if is_norm_scale else 0.3 * noise)


def _tokenizer_file(path):
  """A small byte-level BPE trained here (the paragraph's vocabulary), saved as tokenizer.json."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers

  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=VOCAB,
    special_tokens=["<pad>", "<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator([PARAGRAPH] * 4, trainer)
  tok.save(str(path))
  return str(path)


def _save_torch_shards(model, folder):
  """pytorch_model.bin in two shards with an index (torch.save zip files, read back without pickle execution)."""
  state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
  names = sorted(state)
  shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
  weight_map = {}
  for shard, keys in shards.items():
    torch.save({k: state[k] for k in keys}, os.path.join(folder, shard))
    weight_map.update({k: shard for k in keys})
  with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  model.config.save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """family -> (HF directory, transformers model). GPT-2 is saved as sharded pytorch_model.bin, BLOOM as sharded
  safetensors, MPT as one model.safetensors; each directory carries the same tokenizer.json."""
  root = tmp_path_factory.mktemp("hf")
  tokenizer = _tokenizer_file(root / "tokenizer.json")
  classes = {"gpt2": transformers.GPT2LMHeadModel, "bloom": transformers.BloomForCausalLM}
  classes["mpt"] = transformers.MptForCausalLM
  out = {}
  for seed, (family, config) in enumerate(_hf_configs().items()):
    torch.manual_seed(seed)
    model = classes[family](config).eval()
    _randomize(model, seed)
    folder = root / family
    folder.mkdir()
    if family == "gpt2":
      _save_torch_shards(model, folder)
    else:
      model.save_pretrained(folder, max_shard_size="40KB" if family == "bloom" else "1GB")
    with open(tokenizer, "rb") as src, open(folder / "tokenizer.json", "wb") as dst:
      dst.write(src.read())
    out[family] = (str(folder), model)
  return out


@pytest.fixture(scope="module")
def imported(hf_models, tmp_path_factory):
  """family -> (OUT_DIR written by `convert from-hf`, GPTConfig, params)."""
  out = {}
  for family, (folder, _) in hf_models.items():
    out_dir = str(tmp_path_factory.mktemp(f"out_{family}"))
    assert convert_main(["from-hf", folder, out_dir]) == 0
    params, _ = params_io.load_params(out_dir)
    cfg = GPTConfig(**params_io.read_info(out_dir)["config"])
    out[family] = (out_dir, cfg, params)
  return out


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def _our_logits(cfg, params, tokens):
  return np.asarray(GPTDecoder(cfg).apply({"params": params}, jnp.asarray(tokens), enable_dropout=False))


def _cached_logits(cfg, params, tokens, prompt_len):
  """Our KV-cached path: prefill `prompt_len` tokens, then one decode step per remaining token."""
  module = GPTDecoder(cfg)
  batch, length = tokens.shape
  tokens = jnp.asarray(tokens)
  _, var = module.apply({"params": params}, jnp.ones_like(tokens), enable_dropout=False, decode=True, mutable=["cache"])
  prefill_logits, var = module.apply(
    {"params": params, "cache": var["cache"]}, tokens[:, :prompt_len], enable_dropout=False, prefill=True,
    mutable=["cache"],
  )  # fmt: skip
  step = jax.jit(
    lambda cache, tok: module.apply(
      {"params": params, "cache": cache}, tok, enable_dropout=False, decode=True, mutable=["cache"]
    )
  )
  cache, rows = var["cache"], [np.asarray(prefill_logits)]
  for t in range(prompt_len, length):
    logits, var = step(cache, tokens[:, t : t + 1])
    cache = var["cache"]
    rows.append(np.asarray(logits))
  return np.concatenate(rows, axis=1)


def _reference(family, hf_models, length):
  """The transformers model; for MPT past its max_seq_len the same weights with max_seq_len raised to `length`
  (transformers' MPT cannot run longer: its ALiBi table has max_seq_len columns, and that is all the key sizes)."""
  folder, model = hf_models[family]
  if family == "mpt" and length > MPT_MAX_SEQ_LEN:
    model = transformers.MptForCausalLM.from_pretrained(folder, max_seq_len=length).eval()
  return model


def _tokens(seed, batch, length):
  return np.random.RandomState(seed).randint(0, VOCAB, (batch, length))


# ------------------------------------------------------------------------------------------ ALiBi slopes
@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64, 96])
def test_alibi_slopes_equal_bloom_and_mpt(num_heads):
  bloom = build_alibi_tensor(torch.ones(1, 2), num_heads, torch.float32)[:, 0, 1].numpy()  # slope * position 1
  np.testing.assert_allclose(alibi_slopes(num_heads), bloom, rtol=1e-6, atol=0)
  for bias_max in (8, 4, 16):  # MPT's attn_config.alibi_bias_max
    mpt = -build_mpt_alibi_tensor(num_heads, 2, alibi_bias_max=bias_max)[:, 0, 0].numpy()  # slope * position -1
    np.testing.assert_allclose(alibi_slopes(num_heads, bias_max), mpt, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("family", ["gpt2", "bloom", "mpt"])
def test_logits_match_transformers(family, hf_models, imported):
  _, model = hf_models[family]
  _, cfg, params = imported[family]
  tokens = _tokens(1, 3, 24)
  diff = np.abs(_our_logits(cfg, params, tokens) - _hf_logits(model, tokens)).max()
  assert diff <= TOL, f"{family}: max abs logit diff {diff}"


@pytest.mark.parametrize("family", ["bloom", "mpt"])
def test_alibi_long_inputs_and_cached_decoding(family, hf_models, imported):
  """Inputs twice MPT's max_seq_len: full forward and cached decoding (prefill 8, then one token per step) against
  transformers (see `_reference` for MPT)."""
  _, cfg, params = imported[family]
  length = 2 * MPT_MAX_SEQ_LEN
  tokens = _tokens(2, 2, length)
  reference = _hf_logits(_reference(family, hf_models, length), tokens)
  full = _our_logits(cfg, params, tokens)
  cached = _cached_logits(cfg, params, tokens, prompt_len=8)
  assert np.abs(full - reference).max() <= TOL
  assert np.abs(cached - reference).max() <= TOL


@pytest.mark.parametrize("family", ["gpt2", "bloom", "mpt"])
def test_greedy_generation_matches_transformers(family, hf_models, imported):
  model = _reference(family, hf_models, 41)
  _, cfg, params = imported[family]
  prompts = _tokens(3, 2, 8)
  lm = models.DecoderOnlyLM(GPTDecoder(cfg))
  ours = generate.generate(lm, params, prompts, max_new_tokens=32, eos_id=VOCAB + 1)
  # Our decoders feed token 0 as BOS before the prompt (the T5X / seqio decoder-input convention the model is
  # trained with), so transformers gets the same sequence: [0, prompt].
  hf_prompts = np.concatenate([np.zeros((2, 1), np.int64), prompts], axis=1)
  with torch.no_grad():
    theirs = model.generate(
      torch.tensor(hf_prompts), attention_mask=torch.ones(hf_prompts.shape, dtype=torch.long), do_sample=False,
      max_new_tokens=32, min_new_tokens=32, use_cache=True, pad_token_id=0,
    ).numpy()  # fmt: skip
  assert theirs.shape == (2, 41)
  np.testing.assert_array_equal(np.asarray(ours)[:, :40], theirs[:, 1:])


# ------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("family", ["gpt2", "bloom", "mpt"])
def test_export_loads_in_transformers_and_round_trips(family, hf_models, imported, tmp_path):
  _, model = hf_models[family]
  out_dir, cfg, params = imported[family]
  assert convert_main(["to-hf", out_dir, str(tmp_path)]) == 0
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert type(exported) is type(model)
  tokens = _tokens(4, 2, 16)
  assert np.abs(_hf_logits(exported, tokens) - _our_logits(cfg, params, tokens)).max() <= TOL
  # import -> export is exact: every tensor of the original model, bit for bit (the tied head is not stored).
  written = hf_io.read_weights(str(tmp_path))
  original = {k: v.numpy() for k, v in model.state_dict().items() if k != hf_io.LM_HEAD}
  assert sorted(written) == sorted(original)
  for name, value in original.items():
    np.testing.assert_array_equal(written[name], value, err_msg=name)
  assert os.path.isfile(tmp_path / "tokenizer.json")


def test_export_of_a_model_trained_here(tmp_path):
  """From-scratch models of our own (random init, every param perturbed) go out as GPT-2 and MPT and match; the
  stacked `layers/` layout (scan_layers) exports the same tensors."""
  from gpt_plugin.convert import littlegpt

  rng = np.random.RandomState(7)
  for cfg in (
    GPTConfig(vocab_size=64, emb_dim=32, num_heads=2, num_layers=2, block_type="sequential",
              position_embedding="learned", max_position_embeddings=32, gelu_approximate=False),
    GPTConfig(vocab_size=64, emb_dim=24, num_heads=3, num_layers=2, block_type="sequential", use_bias=False,
              gelu_approximate=False, layer_norm_epsilon=1e-5, clip_qkv=0.5),
  ):  # fmt: skip
    tokens = rng.randint(0, 64, (2, 12))
    params = GPTDecoder(cfg).init(jax.random.PRNGKey(0), jnp.asarray(tokens), enable_dropout=False)["params"]
    params = jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.standard_normal(x.shape).astype(np.float32), params)
    config, tensors = hf_export.export_hf(params, cfg)
    hf_io.write_model_dir(str(tmp_path), config, tensors)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    diff = np.abs(_hf_logits(model, tokens) - _our_logits(cfg, params, tokens)).max()
    assert diff <= TOL, f"{config['architectures']}: {diff}"
    stacked = littlegpt.with_layers(params, littlegpt.layer_list(params), True)
    _, from_stacked = hf_export.export_hf(stacked, dataclasses.replace(cfg, scan_layers=True))
    assert all(np.array_equal(from_stacked[k], v) for k, v in tensors.items())


@pytest.mark.parametrize(
  "changes, feature",
  [
    ({"block_type": "parallel"}, "parallel blocks (block_type='parallel')"),
    ({"use_static_sgu": True, "sgu_kernel_size": 4}, "the static SGU (use_static_sgu=True)"),
    ({"head_qk_trick": True, "head_qk_dim": 8}, "the head-QK trick (head_qk_trick=True)"),
    ({}, "BloomForCausalLM: BLOOM needs embedding_layer_norm=True"),  # ALiBi + biases: neither BLOOM nor MPT
  ],
)
def test_export_refuses_features_without_counterpart(changes, feature, tmp_path, capsys):
  cfg = GPTConfig(
    **{"vocab_size": 64, "emb_dim": 32, "num_heads": 2, "num_layers": 1, "block_type": "sequential", **changes}
  )
  params = GPTDecoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), enable_dropout=False)["params"]
  params_io.save_params(str(tmp_path / "ckpt"), params, {"config": cfg.__dict__})
  assert convert_main(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2
  assert feature in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "hf")


# ------------------------------------------------------------------------------------------ refusals, gin, tokenizer
@pytest.mark.parametrize(
  "family, changes, key",
  [
    ("mpt", {"attn_config": {"qk_ln": True}}, "attn_config.qk_ln=true"),
    ("mpt", {"expansion_ratio": 2}, "expansion_ratio=2"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=true"),
    ("gpt2", {"activation_function": "relu"}, "activation_function='relu'"),
    ("bloom", {"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm=true"),
    ("bloom", {"tie_word_embeddings": False}, "tie_word_embeddings=false"),
  ],
)
def test_import_refuses_unimplemented_config_keys(family, changes, key, hf_models, tmp_path, capsys):
  folder, _ = hf_models[family]
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  config.update(changes)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps(config))
  assert convert_main(["from-hf", str(bad), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert key in err and "config.json" in err
  assert not os.path.exists(tmp_path / "out")


def test_model_gin_builds_the_imported_model(imported):
  import gin

  from gpt_plugin.data.vocabularies import HFTokenizerVocabulary
  from gpt_plugin import gin_utils

  out_dir, cfg, _ = imported["mpt"]
  gin.clear_config()
  try:
    gin_utils.parse_gin([os.path.join(out_dir, "model.gin")], [], finalize=False)
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert dataclasses.replace(model.module.config, dtype="float32") == cfg  # dtype: the run's ACTIVATION_DTYPE
    assert isinstance(model.vocabulary, HFTokenizerVocabulary)
    params_io.load_model_params(out_dir, model)  # the OUT_DIR params fit the gin model (INIT_PARAMS_FROM / eval)
  finally:
    gin.clear_config()


def test_tokenizer_round_trip_matches_transformers(imported):
  from gpt_plugin.data.vocabularies import get_vocabulary

  out_dir, _, _ = imported["bloom"]
  path = os.path.join(out_dir, "tokenizer.json")
  ours = get_vocabulary(path)
  theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
  ids = theirs.encode(PARAGRAPH, add_special_tokens=False)
  assert len(ids) > 20
  assert list(ours.encode(PARAGRAPH)) == ids
  assert ours.decode(ids) == theirs.decode(ids) == PARAGRAPH


def test_bfloat16_safetensors_import(hf_models, tmp_path):
  """bfloat16 checkpoints (numpy has no bfloat16: read through safetensors' flax view) import exactly."""
  _, model = hf_models["mpt"]
  bf16 = transformers.MptForCausalLM(model.config)
  bf16.load_state_dict(model.state_dict())
  bf16.to(torch.bfloat16).save_pretrained(tmp_path)
  cfg, params, _, _ = hf_import.import_hf(str(tmp_path))
  expected = bf16.transformer.blocks[1].attn.out_proj.weight.detach().float().numpy().T
  np.testing.assert_array_equal(params["layers_1"]["attention"]["out"]["kernel"], expected)
  assert cfg.clip_qkv == 0.4 and not cfg.use_bias


def test_export_of_a_fine_tuned_model_dir_finds_its_source(imported, tmp_path):
  """A checkpoint without convert_info.json (a training MODEL_DIR) exports with --gin_file=OUT_DIR/model.gin: the
  model, the tokenizer and the original config.json's other keys come through the gin's HF_SOURCE."""
  out_dir, _, params = imported["bloom"]
  params_io.save_params(str(tmp_path / "model_dir"), params)  # no info, like gpt_plugin.train's checkpoints
  gin_file = os.path.join(out_dir, "model.gin")
  argv = ["to-hf", str(tmp_path / "model_dir"), str(tmp_path / "hf"), f"--gin_file={gin_file}"]
  assert convert_main(argv) == 0
  with open(tmp_path / "hf" / "config.json") as f:
    config = json.load(f)
  with open(os.path.join(out_dir, "convert_info.json")) as f:
    original = json.load(f)["hf_config"]
  assert config["architectures"] == ["BloomForCausalLM"]
  assert config["transformers_version"] == original["transformers_version"]
  assert os.path.isfile(tmp_path / "hf" / "tokenizer.json")
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert tok.decode(tok.encode(PARAGRAPH, add_special_tokens=False)) == PARAGRAPH


def test_package_imports_without_torch_transformers_or_safetensors():
  code = textwrap.dedent("""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
          def find_spec(self, name, path, target=None):
              if name.split(".")[0] in ("torch", "transformers", "safetensors"):
                  raise ImportError("blocked " + name)
      sys.meta_path.insert(0, Block())
      import gpt_plugin.convert, gpt_plugin.convert.__main__
      from gpt_plugin.convert import hf_export, hf_import, hf_io, hf_gpt2, hf_bloom, hf_mpt
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
