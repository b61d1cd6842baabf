"""Datasets: offline generators and loaders (one file each), a dataset's shape facts (``shape``),
and the data modules they feed (``datamodule`` for arrays, ``lm`` for token streams).

May import: attnexp.util.
"""
