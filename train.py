"""Train one configuration: `python train.py attention=muse backbone=cnn`."""

from attnexp.cli import train_main

if __name__ == "__main__":
    train_main()
