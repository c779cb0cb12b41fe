"""Position embeddings (kind ``pos_embed``): added to a stage's tokens after its prefix tokens are put in."""
