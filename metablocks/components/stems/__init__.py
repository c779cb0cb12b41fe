"""Stems (kind ``stem``); conv_stack and cross_scale_embed also register as downsamples."""
