"""Weights from official (non-timm) code bases: one module per family, each mapping the official state_dict keys to
ours (``convert_<family>``) and loading them strictly (``load_<family>``)."""
