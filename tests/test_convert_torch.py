"""Little-GPT <-> gpt_plugin conversion against a PyTorch reference model (tests/littlegpt_reference.py).

Needs torch (the `torch` test extra); skipped with a reason without it. Tiny Little-GPT-shaped models: 8 heads,
parallel blocks, ALiBi, exact GELU, eps 1e-5 (plus the 1B* embedding LayerNorm and a sequential / learned-
position variant), random non-trivial LayerNorm parameters and biases.
"""

import collections
import dataclasses
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (test extra: pip install -e '.[torch]')")

import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from littlegpt_reference import GPT2  # noqa: E402

from gpt_plugin import torch_archive  # noqa: E402
from gpt_plugin.convert import __main__ as cli  # noqa: E402
from gpt_plugin.convert import littlegpt, params_io  # noqa: E402
from gpt_plugin.network import GPTDecoder  # noqa: E402

CASES = {
  # name: (torch vocab, our vocab, d, layers, kwargs of the reference)
  "parallel_alibi": (250, 256, 64, 3, {}),
  "parallel_alibi_stable_embedding": (250, 256, 64, 2, {"use_stable_embedding": True}),
  "gpt2_vocab": (50257, 50304, 32, 1, {}),
  "sequential_learned": (250, 256, 64, 2, {"fused_residuals": False, "use_alibi": False}),
}
NUM_CTX = 64
MEASURED = {}


def reference(case, seed=0):
  vocab, _, d, layers, kw = CASES[case]
  torch.manual_seed(seed)
  model = GPT2(num_ctx=NUM_CTX, embedding_dim=d, N=layers, vocab_size=vocab, num_head=8, **kw).eval()
  with torch.no_grad():  # make every LayerNorm and bias matter
    for name, p in model.named_parameters():
      if "ln" in name or "norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def convert(model, case, **overrides):
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  cfg = littlegpt.infer_config(sd, vocab_size=CASES[case][1], dtype="float32", **overrides)
  return littlegpt.from_torch(sd, cfg), cfg


def tokens(case, batch=2, length=24, seed=0):
  return np.random.RandomState(seed).randint(0, CASES[case][0], (batch, length))


@pytest.mark.parametrize("scan", [False, True], ids=["layers_i", "scanned"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_the_reference(case, scan):
  model = reference(case)
  params, cfg = convert(model, case, scan_layers=scan)
  assert cfg.num_heads == 8 and cfg.gelu_approximate is False and cfg.layer_norm_epsilon == 1e-5
  x = tokens(case)
  with torch.no_grad():
    expected = model(torch.tensor(x)).numpy()
  logits = np.asarray(GPTDecoder(cfg).apply({"params": params}, jnp.asarray(x), enable_dropout=False))
  vocab = CASES[case][0]
  diff = np.abs(logits[..., :vocab] - expected).max()
  MEASURED[f"fp32 {case} scan={scan}"] = diff
  assert diff < 1e-4 * max(1.0, np.abs(expected).max()), diff
  # padded rows are zero, so their logits are exactly zero
  assert np.all(logits[..., vocab:] == 0.0)
  if not scan:
    bf16 = dataclasses.replace(cfg, dtype="bfloat16")
    logits16 = np.asarray(GPTDecoder(bf16).apply({"params": params}, jnp.asarray(x), enable_dropout=False))
    diff16 = np.abs(logits16[..., :vocab] - expected).max()
    MEASURED[f"bf16 {case}"] = diff16
    assert diff16 < 0.05 * max(1.0, np.abs(expected).max()), diff16


@pytest.mark.parametrize("case", ["parallel_alibi", "parallel_alibi_stable_embedding", "sequential_learned"])
def test_cached_decoding_matches_the_reference(case):
  model = reference(case, seed=1)
  params, cfg = convert(model, case)
  module = GPTDecoder(cfg)
  batch, prompt, steps, max_len = 2, 5, 6, 16
  x = tokens(case, batch, prompt + steps, seed=3)
  # ours: empty cache -> prefill with the prompt -> one token at a time
  _, variables = module.apply(
    {"params": params}, jnp.ones((batch, max_len), jnp.int32), decode=True, enable_dropout=False, mutable=["cache"]
  )
  prompt_ids = jnp.asarray(x[:, :prompt])
  logits, variables = module.apply(
    {"params": params, "cache": variables["cache"]},
    prompt_ids,
    prefill=True,
    prefill_lengths=jnp.full((batch,), prompt, jnp.int32),
    enable_dropout=False,
    mutable=["cache"],
  )
  ours = [np.asarray(logits)[:, -1]]
  cache = variables["cache"]
  for t in range(prompt, prompt + steps - 1):
    step_logits, variables = module.apply(
      {"params": params, "cache": cache},
      jnp.asarray(x[:, t : t + 1]),
      decode=True,
      enable_dropout=False,
      mutable=["cache"],
    )
    cache = variables["cache"]
    ours.append(np.asarray(step_logits)[:, 0])
  # reference: Little-GPT's use_cache / past_states
  theirs = []
  with torch.no_grad():
    out, past = model(torch.tensor(x[:, :prompt]), use_cache=True)
    theirs.append(out[:, -1].numpy())
    for t in range(prompt, prompt + steps - 1):
      out, past = model(torch.tensor(x[:, t : t + 1]), use_cache=True, past_states=past)
      theirs.append(out[:, -1].numpy())
    full = model(torch.tensor(x[:, : prompt + steps - 1])).numpy()
  vocab = CASES[case][0]
  ours, theirs = np.stack(ours, 1)[..., :vocab], np.stack(theirs, 1)
  np.testing.assert_allclose(theirs, full[:, prompt - 1 :], atol=1e-4)  # the reference's own cache is right
  diff = np.abs(ours - theirs).max()
  MEASURED[f"decode {case}"] = diff
  assert diff < 1e-4 * max(1.0, np.abs(theirs).max()), diff


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trips_exactly(case, tmp_path):
  model = reference(case)
  params, cfg = convert(model, case, scan_layers=case == "parallel_alibi")
  vocab = CASES[case][0]
  sd = littlegpt.to_torch(params, cfg, vocab_size=vocab, num_ctx=NUM_CTX)
  ref_sd = model.state_dict()
  assert list(sd) and set(sd) == set(ref_sd)
  for k, v in ref_sd.items():
    assert sd[k].dtype == v.numpy().dtype and np.array_equal(sd[k], v.numpy()), k
  # written without torch, read by torch.load(weights_only=True), loaded strictly, still tied
  path = tmp_path / "model_only.pth.tar"
  torch_archive.save_pth(sd, path)
  loaded = torch.load(path, weights_only=True)
  fresh = reference(case, seed=7)
  fresh.load_state_dict(loaded, strict=True)
  assert fresh.lm_head.weight.data_ptr() == fresh.wte.weight.data_ptr()
  x = torch.tensor(tokens(case))
  with torch.no_grad():
    assert torch.equal(fresh(x), model(x))


def test_cli_round_trip_through_complete_state_file(tmp_path):
  """from-torch on a Little-GPT "complete state" file (optimizer, scaler, ...), then to-torch back."""
  case = "parallel_alibi_stable_embedding"
  model = reference(case)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
  model(torch.tensor(tokens(case))).sum().backward()
  opt.step()
  complete = {
    "epoch": 0,
    "step": 10,
    "run_id": "abc",
    "validation_loss": 3.2,
    "best_val": 3.1,
    "optimizer": opt.state_dict(),
    "state_dict": model.state_dict(),
    "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 3},
  }
  src = tmp_path / "127_complete_state.pth.tar"
  torch.save(complete, src)
  out = tmp_path / "converted"
  assert (
    cli.main(
      [
        "from-torch",
        f"--input={src}",
        f"--output={out}",
        "--gin.VOCAB_SIZE=256",
        "--gin_file=models/littlegpt_127m.gin",
        "--gin.network.GPTConfig.emb_dim=64",
        "--gin.network.GPTConfig.num_layers=2",
        "--gin.network.GPTConfig.embedding_layer_norm=True",
      ]
    )
    == 0
  )
  params, _ = params_io.load_params(str(out))
  assert params["token_embedder"]["embedding"].shape == (256, 64)
  back = tmp_path / "back.pth.tar"
  assert cli.main(["to-torch", f"--input={out}", f"--output={back}", f"--num_ctx={NUM_CTX}", "--wrap_state_dict"]) == 0
  loaded = torch.load(back, weights_only=True)["state_dict"]
  for k, v in model.state_dict().items():
    assert torch.equal(loaded[k], v), k


def test_pickle_code_in_a_checkpoint_is_never_run(tmp_path):
  model = reference("parallel_alibi")
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  # A torch.save file whose pickle also calls os.system (in a side entry, and then inside the state dict).
  path = tmp_path / "evil.pth.tar"
  torch.save({"state_dict": model.state_dict(), "extra": Evil()}, path)
  sd = torch_archive.read_state_dict(path)
  assert not marker.exists() and "wte.weight" in sd
  obj = torch_archive.load_pth(path)
  assert isinstance(obj["extra"], torch_archive.Opaque) and "posix.system" in repr(obj["extra"])
  bad = collections.OrderedDict(model.state_dict())
  bad["blocks.0.attn.evil"] = Evil()
  torch.save(bad, tmp_path / "evil2.pth")
  with pytest.raises(torch_archive.TorchFileError, match="blocks.0.attn.evil"):
    torch_archive.read_state_dict(tmp_path / "evil2.pth")
  assert not marker.exists()
  # a raw pickle (not a torch zip) is refused outright
  (tmp_path / "raw.pth").write_bytes(pickle.dumps(Evil(), protocol=2))
  with pytest.raises(torch_archive.TorchFileError, match="legacy"):
    torch_archive.read_state_dict(tmp_path / "raw.pth")
  torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  with pytest.raises(torch_archive.TorchFileError, match="legacy"):
    torch_archive.read_state_dict(tmp_path / "legacy.pth")
  assert not marker.exists()


def test_reader_dtypes_and_strides(tmp_path):
  w = torch.randn(6, 4)
  torch.save(
    {
      "t": w.t(),
      "bf16": w.to(torch.bfloat16),
      "half": w[:, 1:3].half(),
      "long": torch.arange(7),
      "scalar": torch.tensor(2.5),
      "bool": w > 0,
    },
    tmp_path / "x.pth",
  )
  r = torch_archive.read_state_dict(tmp_path / "x.pth")
  assert np.array_equal(r["t"], w.t().numpy())
  assert np.array_equal(r["bf16"].astype(np.float32), w.to(torch.bfloat16).float().numpy())
  assert np.array_equal(r["half"], w[:, 1:3].half().numpy())
  assert np.array_equal(r["long"], np.arange(7)) and r["scalar"].shape == () and r["bool"].dtype == np.bool_
  with zipfile.ZipFile(tmp_path / "x.pth") as zf:
    assert any(n.endswith("data.pkl") for n in zf.namelist())


def test_report_measured_differences():
  """Prints the max-abs logits differences measured above (run with -s to see them)."""
  for k, v in sorted(MEASURED.items()):
    print(f"{k}: max |ours - torch| = {v:.3g}")
