"""Downsamplers between stages (kind ``downsample``)."""
