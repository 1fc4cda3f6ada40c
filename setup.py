"""gpt_plugin: GPT-style decoder-only language models in JAX/Flax, configured with gin."""

import setuptools

INSTALL_REQUIRES = [
  "jax>=0.10.2",
  "jaxlib>=0.10.2",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12.8",
  "clu>=0.0.12",
  "seqio>=0.0.20",
  "gin-config>=0.5.0",
  "tensorflow-cpu>=2.21.0",
  "tensorflow-text>=2.21.1",
  "webdataset>=1.0.2",
  "braceexpand",
  "tokenizers>=0.20",
  "safetensors",  # Hugging Face weights (python -m gpt_plugin.convert from-hf / to-hf), imported only there
  "sentencepiece==0.2.0",
  "numpy",
  "absl-py",
  "tqdm",
  "matplotlib",
  "tensorboard",
]

# Everything the test suite needs to run on a CPU with no skips but the t5x-from-source and GPU-only tests:
# torch (CPU, the PyTorch reference of Little-GPT and real torch.save shards), transformers (HF GPT-2 checks),
# bitsandbytes (its CPU dequantizer is the reference for 8-bit checkpoints) and apache-beam (seqio's cache job).
# apache-beam 2.77 pins protobuf < 7 (tensorflow 2.21 works with protobuf 6), which is why INSTALL_REQUIRES keeps
# sentencepiece at 0.2.0.
CACHE_REQUIRES = ["apache-beam==2.77.0", "google-crc32c"]
TORCH_REQUIRES = ["torch==2.13.0", "transformers>=5.24", "bitsandbytes==0.50.2"]
EXTRAS_REQUIRE = {
  "test": ["pytest>=8", "pytest-xdist"] + TORCH_REQUIRES + CACHE_REQUIRES,
  # seqio's cache job runs on Apache Beam (see README, "seqio caching").
  "cache": CACHE_REQUIRES,
  # Reference PyTorch model for conversion tests; CPU wheel.
  "torch": TORCH_REQUIRES,
  # Triton compiler for benchmarks/kernel_resources.py (registers/spills of the flash kernels, no GPU needed).
  "kernels": ["triton==3.5.1"],
}

# The gin files stay at the top of the repository (gin/) and ship inside the package as gpt_plugin/gin, where
# gpt_plugin.gin_utils looks first (a checkout or editable install falls back to <repo>/gin).
GIN_PACKAGE = "gpt_plugin.gin"

CONSOLE_SCRIPTS = [
  "gpt-plugin-train = gpt_plugin.cli:train",
  "gpt-plugin-eval = gpt_plugin.cli:eval",
  "gpt-plugin-infer = gpt_plugin.cli:infer",
  "gpt-plugin-convert = gpt_plugin.cli:convert",
  "gpt-plugin-build-corpus = gpt_plugin.cli:build_corpus",
]

setuptools.setup(
  name="gpt_plugin",
  version="0.1.0",
  description="GPT decoder (ALiBi, SGU, head-QK, parallel blocks) for JAX/Flax, T5X-compatible, configured with gin.",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["gpt_plugin", "gpt_plugin.*", "tasks", "tasks.*"]) + [GIN_PACKAGE],
  package_dir={GIN_PACKAGE: "gin"},
  package_data={"gpt_plugin.data": ["sample_corpus/*"], GIN_PACKAGE: ["*/*.gin"]},
  entry_points={"console_scripts": CONSOLE_SCRIPTS},
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
