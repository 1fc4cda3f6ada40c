"""Generation and evaluation runners (gin-bound logic behind `python -m gpt_plugin.infer` / `gpt_plugin.eval`)."""
