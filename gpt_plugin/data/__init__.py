"""Data: tar-shard reading (shards, pth_reader), vocabularies, seqio tasks (tasks_lib), the input pipeline
(pipeline.get_dataset) and the corpus builder (python -m gpt_plugin.data.build_corpus)."""
