"""Turn UTF-8 text into token files for ``dataset=tokens``: nanoGPT's ``train.bin`` / ``val.bin`` /
``test.bin`` (uint16 ids), the ``tokenizer.json`` that made them and a ``manifest.json`` (the
source's and the tokenizer's hashes, each split's tokens and bytes). The text is cut by characters
(``--train-fraction``, ``--val-fraction``; the rest tests). Offline; the same command run twice
writes byte-identical files.

    # a byte-level BPE of 2048 tokens trained on the training part of one file
    python scripts/prepare_text.py --input data/input.txt --vocab-size 2048 --out data/my_bpe
    # a tokenizer you bring; a folder of text files; a Hugging Face dataset (save_to_disk or cache)
    python scripts/prepare_text.py --input corpus/ --tokenizer tokenizer.json --out data/tok
    python scripts/prepare_text.py --input wikitext --text-column text --vocab-size 8192 --out w
    python train.py dataset=tokens dataset.path=data/my_bpe dataset.source.test=test.bin \\
        dataset.shape.vocab_size=2048
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnexp.data.bpe import prepare_text, read_texts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="a text file, a folder of them, or a Hugging Face dataset")
    parser.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    tokens = parser.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--vocab-size", type=int, help="train a byte-level BPE of this many tokens")
    tokens.add_argument("--tokenizer", help="a tokenizer.json to use instead")
    parser.add_argument("--train-fraction", type=float, default=0.9)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--text-column", default="text", help="a Hugging Face dataset's text column")
    parser.add_argument("--split", default="train", help="a Hugging Face dataset's split to read")
    args = parser.parse_args(argv)
    try:
        print(f"reading {args.input}", file=sys.stderr)
        text = "\n".join(read_texts(args.input, args.text_column, args.split))
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        out = prepare_text(
            text, args.out, args.vocab_size, args.tokenizer, args.train_fraction,
            args.val_fraction, digest, progress=lambda m: print(m, file=sys.stderr), replace=True,
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
