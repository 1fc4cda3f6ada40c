"""gpt_plugin: GPT-style decoder-only language models in JAX/Flax, configured with gin."""

__version__ = "0.1.0"
