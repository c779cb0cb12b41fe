"""One module per timm family whose keys need more than KEY_RENAMES: each calls ``register_converter``."""
