"""Re-evaluate a run on its test split: `python eval.py ckpt_path=outputs/runs/<name>/<time>`."""

from attnexp.cli import eval_main

if __name__ == "__main__":
    eval_main()
