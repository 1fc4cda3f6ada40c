r"""Rebuilds the bundled ``pydocs`` sample corpus from Debian's ``python3.11-doc``.

    apt-get update && apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python gpt_plugin/data/sample_corpus/make_pydocs.py --doc_root /tmp/pydoc/usr/share/doc/python3.11/html/_sources

Takes the reStructuredText sources of the tutorial, HOWTOs, FAQ, "using", language
reference, extending/embedding, installing/distributing guides and the glossary,
splits each file into documents at its section headings, writes them as JSONL and
runs ``python -m gpt_plugin.data.build_corpus`` with the settings recorded in
``metadata.json`` (byte-level BPE of 8192 tokens trained on the train split).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

PARTS = ["tutorial", "howto", "faq", "using", "reference", "extending", "installing", "distributing",
         "install", "glossary.rst.txt"]
HEADING = re.compile(r"^(=+|-+|~+|\*+|\^+|#+)\s*$")


def split_sections(text: str) -> list[str]:
    lines = text.split("\n")
    cuts = [0]
    for i in range(1, len(lines)):
        # a heading: a text line followed by an underline at least as long
        if HEADING.match(lines[i]) and lines[i - 1].strip() and len(lines[i].strip()) >= len(lines[i - 1].strip()) \
                and not HEADING.match(lines[i - 1]):
            start = i - 1
            if start >= 1 and HEADING.match(lines[start - 1]):  # overlined title
                start -= 1
            if start > cuts[-1]:
                cuts.append(start)
    cuts.append(len(lines))
    docs = ["\n".join(lines[a:b]).strip("\n") for a, b in zip(cuts[:-1], cuts[1:])]
    return [d for d in docs if len(d.strip()) >= 200]


def collect(doc_root: str) -> list[dict]:
    out = []
    for part in PARTS:
        path = os.path.join(doc_root, part)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.endswith(".rst.txt"))
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for j, doc in enumerate(split_sections(fh.read())):
                    out.append({"text": doc, "source": os.path.relpath(f, doc_root), "section": j})
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--doc_root", required=True)
    p.add_argument("--output_dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--num_workers", type=int, default=2)
    a = p.parse_args()
    docs = collect(a.doc_root)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "pydocs.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        cmd = [sys.executable, "-m", "gpt_plugin.data.build_corpus", "--input", jsonl, "--output_dir", a.output_dir,
               "--name", "pydocs", "--train_tokenizer", "8192", "--n_ctx", "1024", "--validation_fraction", "0.05",
               "--seed", "1996", "--max_samples_per_shard", "32", "--num_workers", str(a.num_workers), "--quiet"]
        print(" ".join(cmd[1:]))
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
