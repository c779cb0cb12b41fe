"""Heads (kind ``head``)."""
