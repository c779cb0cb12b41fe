"""Weights in and out: timm state_dicts into metablocks models."""
