"""Little-GPT 8-bit checkpoints (`1B_weights_8bit.pth.tar`: `FrozenBNBLinear` layers with uint8 `weight`, `absmax`,
`code`) -> dequantized -> converted.

Torch-free tests use a hand-written blockwise quantizer and dynamic code table (below). The logits test against
the PyTorch reference needs torch; the exactness test against bitsandbytes' own `dequantize_blockwise` needs
bitsandbytes (a CPU build works); each is skipped with a reason without them.
"""

import json
import os
import sys

import numpy as np
import pytest

from gpt_plugin import torch_archive
from gpt_plugin.convert import __main__ as cli
from gpt_plugin.convert import littlegpt, params_io
from gpt_plugin.network import GPTConfig

sys.path.insert(0, os.path.dirname(__file__))

CFG = GPTConfig(
  vocab_size=256,
  emb_dim=64,
  num_heads=8,
  num_layers=2,
  block_type="parallel",
  position_embedding="alibi",
  gelu_approximate=False,
  layer_norm_epsilon=1e-5,
  dtype="float32",
)


def dynamic_code(max_exponent_bits=7):
  """Signed dynamic ("tree") 8-bit code, as described for bitsandbytes: 1 sign bit, the exponent (powers of 10
  from 1e-6 to 1) in unary, the remaining bits a linear fraction in [0.1, 1]; plus 0 and 1. 256 sorted values."""
  values = []
  for i in range(max_exponent_bits):
    items = 2**i + 1  # 7 non-sign bits: exponent i leaves i fraction bits
    edges = np.linspace(0.1, 1.0, items)
    mids = (edges[:-1] + edges[1:]) / 2
    scale = 10.0 ** (-(max_exponent_bits - 1) + i)
    values += list(scale * mids) + list(-scale * mids)
  values += [0.0, 1.0]
  assert len(values) == 256, len(values)  # 2 * (1 + 2 + ... + 64) + 2
  return np.sort(np.asarray(values, np.float32))


def quantize_blockwise(x, code, blocksize=4096, chunk=None):
  """Nearest-code blockwise quantization: absmax per block of the flattened tensor, bytes = argmin |code - x/absmax|.
  `chunk` (a multiple of blocksize) quantizes chunk by chunk and concatenates, like a low-memory quantizer."""
  flat = np.asarray(x, np.float32).reshape(-1)
  if chunk:
    assert chunk % blocksize == 0
    parts = [quantize_blockwise(flat[i : i + chunk], code, blocksize) for i in range(0, flat.size, chunk)]
    return (np.concatenate([p[0] for p in parts]).reshape(np.shape(x)), np.concatenate([p[1] for p in parts]))
  nb = -(-flat.size // blocksize)
  padded = np.zeros(nb * blocksize, np.float32)
  padded[: flat.size] = flat
  absmax = np.abs(padded.reshape(nb, blocksize)).max(axis=1).astype(np.float32)
  scaled = padded.reshape(nb, blocksize) / np.where(absmax == 0, 1, absmax)[:, None]
  order = np.argsort(code)
  pos = np.clip(np.searchsorted(code[order], scaled), 1, 255)
  lo, hi = code[order][pos - 1], code[order][pos]
  idx = np.where(np.abs(scaled - lo) <= np.abs(hi - scaled), order[pos - 1], order[pos])
  return idx.reshape(-1)[: flat.size].astype(np.uint8).reshape(np.shape(x)), absmax


LINEARS = ("attn.query", "attn.key", "attn.value", "attn.fc_resid", "mlp.fc1", "mlp.fc_resid")


def quantize_state_dict(sd, code, lm_head=False):
  """A Little-GPT `bnbfy_`-style state dict: every block Linear weight (and optionally lm_head) 8-bit. Mixed
  blocksizes / layouts on purpose: 4096, 2048, 256 and chunked 4096 (absmax concatenated), one int8 copy."""
  out, bounds = dict(sd), {}
  gap = np.max(np.diff(np.sort(code))) / 2
  names = [
    k for k in sd if k.startswith("blocks.") and k.endswith(".weight") and any(f".{n}." in k for n in LINEARS)
  ] + (["lm_head.weight"] if lm_head else [])
  for i, k in enumerate(sorted(names)):
    bs, chunk = [(4096, None), (2048, None), (256, None), (4096, 8192)][i % 4]
    q, absmax = quantize_blockwise(sd[k], code, bs, chunk)
    stem = k[: -len(".weight")]
    out[k] = q.view(np.int8) if i == 1 else q
    out[f"{stem}.absmax"], out[f"{stem}.code"] = absmax, code.copy()
    bounds[k] = np.repeat(absmax, bs)[: q.size].reshape(q.shape) * gap * 1.001 + 1e-7
  return out, bounds


def float_state_dict(seed=0):
  rng = np.random.RandomState(seed)
  sd = {}
  for k, shape in littlegpt.torch_shapes(CFG, 250).items():
    sd[k] = (rng.randn(*shape) * (0.02 if k.endswith("weight") and len(shape) == 2 else 0.1)).astype(np.float32)
    if k.endswith(("ln1.weight", "norm.weight")):
      sd[k] += 1.0
  sd["lm_head.weight"] = sd["wte.weight"]
  for i in range(CFG.num_layers):
    sd[f"blocks.{i}.attn.slopes"] = littlegpt.alibi_slopes(8).astype(np.float32)
    sd[f"blocks.{i}.attn.mask"] = np.tril(np.ones((16, 16), np.uint8))[None, None]
  return sd


def test_blocksize_inference():
  assert littlegpt.infer_blocksize(5000, 2) == 4096 and littlegpt.infer_blocksize(5000, 3) == 2048
  assert littlegpt.infer_blocksize(64 * 256, 256) == 64 and littlegpt.infer_blocksize(100, 1) == 4096
  assert littlegpt.infer_blocksize(5000, 7) is None  # ceil(5000/b) is 7 for no power-of-two b


def test_dequantize_matches_the_hand_written_quantizer():
  code = dynamic_code()
  assert code.shape == (256,) and code.max() == 1.0 and -1.0 < code.min() < -0.99 and np.all(np.diff(code) > 0)
  x = np.random.RandomState(0).randn(3, 3000).astype(np.float32)
  for bs, chunk in ((4096, None), (2048, None), (64, None), (4096, 4096)):
    q, absmax = quantize_blockwise(x, code, bs, chunk)
    deq = littlegpt.dequantize_blockwise(q, absmax, code)  # blocksize inferred
    assert deq.shape == x.shape and deq.dtype == np.float32
    expected = code[q.reshape(-1)] * np.repeat(absmax, bs)[: x.size]
    assert np.array_equal(deq.reshape(-1), expected)
    assert np.array_equal(littlegpt.dequantize_blockwise(q.view(np.int8), absmax, code), deq)
    assert np.abs(deq - x).max() < 0.02 * np.abs(x).max()


def test_8bit_state_dict_converts_within_the_quantization_error():
  code = dynamic_code()
  sd = float_state_dict()
  qsd, bounds = quantize_state_dict(sd, code, lm_head=True)
  dq, report = littlegpt.dequantize_8bit(qsd)
  assert set(report["params"]) == set(bounds) and not any(k.endswith((".absmax", ".code")) for k in dq)
  assert sorted(set(report["params"].values())) == [256, 2048, 4096]
  info = littlegpt.quantization_info(report)
  assert info["num_params"] == len(bounds) and json.dumps(info)
  for k, bound in bounds.items():
    assert np.all(np.abs(dq[k] - sd[k]) <= bound), k
  cfg = littlegpt.infer_config(qsd, vocab_size=256, dtype="float32")
  assert cfg == CFG
  ours, ref = littlegpt.from_torch(qsd, cfg), littlegpt.from_torch(sd, cfg)  # 8-bit lm_head: tied within error
  assert np.array_equal(ours["token_embedder"]["embedding"], ref["token_embedder"]["embedding"])
  for i in range(CFG.num_layers):
    got, want = ours[f"layers_{i}"], ref[f"layers_{i}"]
    for j, n in enumerate(("query", "key", "value")):
      k = f"blocks.{i}.attn.{n}.weight"
      assert np.all(
        np.abs(got["attention"]["qkv"]["kernel"][:, j] - want["attention"]["qkv"]["kernel"][:, j]) <= bounds[k].T
      )
    assert np.all(
      np.abs(got["mlp"]["wi"]["kernel"] - want["mlp"]["wi"]["kernel"]) <= bounds[f"blocks.{i}.mlp.fc1.weight"].T
    )
    assert np.array_equal(got["mlp"]["wi"]["kernel"], dq[f"blocks.{i}.mlp.fc1.weight"].T)
    assert np.array_equal(got["input_norm"]["scale"], want["input_norm"]["scale"])
  # an 8-bit head that is NOT the embedding is still refused
  bad = dict(qsd, **{"lm_head.code": -qsd["lm_head.code"]})
  with pytest.raises(littlegpt.ConversionError, match="untied: lm_head.weight"):
    littlegpt.from_torch(bad, cfg)


def test_bad_8bit_entries_are_named():
  code = dynamic_code()
  qsd, _ = quantize_state_dict(float_state_dict(), code)
  assert qsd["blocks.0.attn.query.absmax"].size == 16  # blocks of 256
  qsd["blocks.0.attn.query.absmax"] = qsd["blocks.0.attn.query.absmax"][:-1]
  qsd["blocks.0.mlp.fc1.absmax"] = np.ones(7, np.float32)  # 16384 values in 7 blocks: no blocksize
  del qsd["blocks.1.attn.key.code"]
  qsd["blocks.1.mlp.fc_resid.code"] = code[:16]
  with pytest.raises(littlegpt.ConversionError) as e:
    littlegpt.dequantize_8bit(qsd)
  msg = str(e.value)
  for needle in (
    "blocks.0.mlp.fc1.weight: 16384 values (256, 64) with 7 absmax entries fit no blockwise blocksize",
    "incomplete 8-bit param: blocks.1.attn.key has blocks.1.attn.key.weight, blocks.1.attn.key.absmax "
    "but no blocks.1.attn.key.code",
    "blocks.1.mlp.fc_resid: code has 16 entries",
    "blocks.0.attn.query.weight: 4096 values (64, 64) with 15 absmax entries",
    "4 problems",
  ):
    assert needle in msg, (needle, msg)
  assert "blocks.0.attn.value" not in msg and "blocks.1.mlp.fc1" not in msg


def test_cli_records_the_8bit_source(tmp_path):
  code = dynamic_code()
  sd = float_state_dict()
  qsd, _ = quantize_state_dict(sd, code)
  torch_archive.save_pth({"state_dict": qsd}, tmp_path / "1B_weights_8bit.pth.tar")
  torch_archive.save_pth(sd, tmp_path / "float.pth")
  assert cli.main(["from-torch", f"--input={tmp_path / '1B_weights_8bit.pth.tar'}", f"--output={tmp_path / 'q'}"]) == 0
  assert cli.main(["from-torch", f"--input={tmp_path / 'float.pth'}", f"--output={tmp_path / 'f'}"]) == 0
  info = json.loads((tmp_path / "q" / "convert_info.json").read_text())
  assert info["source_8bit"] is True and info["source_quantization"]["num_params"] == 6 * CFG.num_layers
  assert info["source_quantization"]["format"] == littlegpt.QUANTIZATION_FORMAT
  assert json.loads((tmp_path / "f" / "convert_info.json").read_text())["source_8bit"] is False
  params, _ = params_io.load_params(str(tmp_path / "q"))
  dq, _ = littlegpt.dequantize_8bit(qsd)
  assert np.array_equal(params["layers_1"]["mlp"]["wo"]["kernel"], dq["blocks.1.mlp.fc_resid.weight"].T)
  bad = dict(qsd, **{"blocks.0.mlp.fc1.absmax": np.ones(7, np.float32)})
  torch_archive.save_pth(bad, tmp_path / "bad.pth")
  assert cli.main(["from-torch", f"--input={tmp_path / 'bad.pth'}", f"--output={tmp_path / 'b'}"]) == 2


def test_logits_match_the_reference_with_dequantized_weights():
  torch = pytest.importorskip("torch", reason="torch is not installed (test extra: pip install -e '.[torch]')")
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from littlegpt_reference import GPT2  # pylint: disable=import-outside-toplevel
  from gpt_plugin.network import GPTDecoder  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = GPT2(num_ctx=64, embedding_dim=64, N=2, vocab_size=250, num_head=8, use_stable_embedding=True).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "ln" in name or "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  qsd, bounds = quantize_state_dict(sd, dynamic_code())
  cfg = littlegpt.infer_config(qsd, vocab_size=256, dtype="float32")
  params = littlegpt.from_torch(qsd, cfg)
  dq, _ = littlegpt.dequantize_8bit(qsd)
  with torch.no_grad():  # the reference runs what FrozenBNBLinear computes: the dequantized weights
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in dq.items()}, strict=True)
  x = np.random.RandomState(0).randint(0, 250, (2, 24))
  with torch.no_grad():
    expected = model(torch.tensor(x)).numpy()
  logits = np.asarray(GPTDecoder(cfg).apply({"params": params}, jnp.asarray(x), enable_dropout=False))
  diff = np.abs(logits[..., :250] - expected).max()
  assert diff < 1e-4 * max(1.0, np.abs(expected).max()), diff
  assert all(np.abs(dq[k] - sd[k]).max() > 0 for k in bounds)  # the weights really were quantized


def test_dequantization_equals_bitsandbytes():
  torch = pytest.importorskip("torch", reason="torch is not installed")
  try:
    import bitsandbytes.functional as bnbf  # pylint: disable=import-outside-toplevel
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"bitsandbytes is not installed or does not load here ({type(e).__name__}: {e})")
  code = bnbf.create_dynamic_map(signed=True)
  # our test table is bitsandbytes' dynamic code (up to float32 rounding of its linspace)
  np.testing.assert_allclose(dynamic_code(), code.numpy(), rtol=0, atol=1e-7)
  g = torch.Generator().manual_seed(0)
  for shape, bs in (
    ((256, 64), 4096),
    ((64, 64), 4096),
    ((3, 3000), 4096),
    ((3, 3000), 2048),
    ((250, 64), 256),
    ((10, 100), 64),
  ):
    w = torch.randn(*shape, generator=g) * 0.05
    q, state = bnbf.quantize_blockwise(w, blocksize=bs)
    expected = bnbf.dequantize_blockwise(q, state).numpy()
    assert q.dtype == torch.uint8 and state.absmax.numel() == -(-w.numel() // bs)
    ours = littlegpt.dequantize_blockwise(q.numpy(), state.absmax.numpy(), state.code.numpy())
    assert ours.shape == tuple(shape) and np.array_equal(ours, expected), (shape, bs)
  # chunked quantization (chunks of a multiple of 4096, absmax concatenated) reads as one 4096-block layout
  w = torch.randn(40, 300, generator=g)
  parts = [bnbf.quantize_blockwise(c, blocksize=4096) for c in w.reshape(-1).split(8192)]
  q = torch.cat([p[0] for p in parts]).reshape(w.shape)
  absmax = torch.cat([p[1].absmax for p in parts])
  expected = torch.cat([bnbf.dequantize_blockwise(*p) for p in parts]).reshape(w.shape).numpy()
  sd, report = littlegpt.dequantize_8bit(
    {"x.weight": q.numpy(), "x.absmax": absmax.numpy(), "x.code": parts[0][1].code.numpy()}
  )
  assert report["params"] == {"x.weight": 4096} and np.array_equal(sd["x.weight"], expected)
