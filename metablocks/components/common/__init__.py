"""Helpers shared by components (conv arithmetic, re-parameterization); no components here."""
