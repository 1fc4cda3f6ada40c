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
  "sentencepiece==0.2.0",
  "numpy",
  "absl-py",
  "tqdm",
  "matplotlib",
  "tensorboard",
]

EXTRAS_REQUIRE = {
  "test": ["pytest>=8", "pytest-xdist"],
  # seqio's cache job runs on Apache Beam (see README, "seqio caching").
  "cache": ["apache-beam==2.77.0", "google-crc32c"],
  # Reference PyTorch model for conversion tests; CPU wheel.
  "torch": ["torch==2.13.0"],
  # Triton compiler for benchmarks/kernel_resources.py (registers/spills of the flash kernels, no GPU needed).
  "kernels": ["triton==3.5.1"],
}

setuptools.setup(
  name="gpt_plugin",
  version="0.1.0",
  description="GPT decoder (ALiBi, SGU, head-QK, parallel blocks) for JAX/Flax, T5X-compatible, configured with gin.",
  python_requires=">=3.11",
  packages=setuptools.find_packages(include=["gpt_plugin", "gpt_plugin.*", "tasks", "tasks.*"]),
  package_data={"gpt_plugin.data": ["sample_corpus/*"]},
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
