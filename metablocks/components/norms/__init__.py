"""Normalization layers (kind ``norm``)."""
