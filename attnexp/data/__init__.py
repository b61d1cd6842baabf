"""Datasets: offline generators/loaders (one file each) and the in-memory data module they feed."""
