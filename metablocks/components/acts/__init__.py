"""Activations (kind ``act``)."""
