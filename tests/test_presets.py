"""Model presets (gin/models) and feature switches (gin/features): parameter counts and composition."""

import pathlib

import gin
import jax
import jax.numpy as jnp
import pytest

from gpt_plugin import network
from gpt_plugin import params_io

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"

# original-project.md §2.1 (millions; the original's own arithmetic for its Flax module) and GPT-2 sizes.
EXPECTED_MILLIONS = {
  "qa": 6.8,
  "small": 3.3,
  "base": 123.7,
  "medium": 303.4,
  "large": 587.2,
  "xl": 757.2,
  "xxl": 1097.2,
  "littlegpt_127m": 127.08,
  "littlegpt_303m": 303.90,
  "littlegpt_1b": 1009.41,
  "gpt2_124m": 124.5,
  "gpt2_355m": 354.9,
  "gpt2_774m": 774.1,
  "gpt2_1558m": 1557.7,  # vocab padded to 50304
}


def load(*files, bindings=()):
  gin.clear_config()
  gin.add_config_file_search_path(str(GIN_DIR))
  gin.parse_config_files_and_bindings([str(GIN_DIR / f) for f in files], list(bindings))
  return gin.query_parameter("%MODEL").scoped_configurable_fn()


@pytest.mark.parametrize("preset", sorted(EXPECTED_MILLIONS))
def test_preset_parameter_count_matches_the_table(preset):
  model = load(f"models/{preset}.gin")
  config = model.module.config
  assert config.num_params() / 1e6 == pytest.approx(EXPECTED_MILLIONS[preset], abs=0.06)
  # The analytic count equals what the module actually creates (shapes only; nothing is allocated).
  shapes = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))[
    "params"
  ]
  assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params()


@pytest.mark.parametrize("feature", sorted(p.stem for p in (GIN_DIR / "features").glob("*.gin")))
def test_every_feature_switch_composes_with_a_preset(feature):
  model = load("models/qa.gin", f"features/{feature}.gin")
  config = model.module.config
  variables = model.get_initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 16)})
  logits = model.module.apply(variables, jnp.ones((1, 16), jnp.int32), enable_dropout=False)
  assert logits.shape == (1, 16, config.vocab_size)


def test_feature_files_switch_the_option_on_and_off():
  assert load("models/base.gin", "features/sgu.gin", "features/head_qk.gin").module.config.use_static_sgu
  cfg = load("models/large.gin", "features/parallel.gin", "features/learned_positions.gin").module.config
  assert (cfg.block_type, cfg.position_embedding) == ("parallel", "learned")
  assert load("models/gpt2_124m.gin", "features/alibi.gin").module.config.position_embedding == "alibi"


def test_misspelled_binding_is_named():
  with pytest.raises(ValueError, match="emb_dimm"):
    load("models/qa.gin", bindings=["network.GPTConfig.emb_dimm = 3"])


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("block_type", ["parallel", "sequential"])
@pytest.mark.parametrize("use_static_sgu", [False, True])
def test_num_params_is_exact_for_every_bias_block_and_sgu_choice(use_bias, block_type, use_static_sgu):
  config = network.GPTConfig(
    vocab_size=64,
    emb_dim=32,
    num_heads=4,
    num_layers=2,
    mlp_dim=64,
    use_bias=use_bias,
    block_type=block_type,
    use_static_sgu=use_static_sgu,
    embedding_layer_norm=True,
  )
  shapes = params_io.abstract_params(config)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params()
