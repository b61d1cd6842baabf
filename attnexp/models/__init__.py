"""Backbones: one file each, every attention variant fits every backbone."""
