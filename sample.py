"""Print samples from a language model run: `python sample.py ckpt_path=<run dir or .ckpt> prompt="ROMEO:"`."""

from attnexp.cli import sample_main

if __name__ == "__main__":
    sample_main()
