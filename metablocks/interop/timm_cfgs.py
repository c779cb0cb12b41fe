"""Data configs of the timm models the recipes mirror (``timm_name``): the default pretrained tag's preprocessing.

Values read from timm 1.0.31 (``timm.models.get_pretrained_cfg(name)``); every entry there has 3x224x224 input
(ecaresnet26t, ecaresnet50t: 256, their recipes' img_size), bicubic interpolation, a center crop and 1000 classes.
``model.pretrained_cfg`` is built from this table, so ``timm.data.resolve_data_config({}, model=model)`` gives our
model timm's evaluation transform.
"""
from __future__ import annotations

MEAN_STD = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# timm_name -> (default tag, crop_pct, mean/std)
TIMM_DATA_CFGS: dict[str, tuple[str, float, str]] = {
    "caformer_b36": ("sail_in1k", 1.0, "imagenet"),
    "caformer_m36": ("sail_in1k", 1.0, "imagenet"),
    "caformer_s18": ("sail_in1k", 1.0, "imagenet"),
    "caformer_s36": ("sail_in1k", 1.0, "imagenet"),
    "convformer_b36": ("sail_in1k", 1.0, "imagenet"),
    "convformer_m36": ("sail_in1k", 1.0, "imagenet"),
    "convformer_s18": ("sail_in1k", 1.0, "imagenet"),
    "convformer_s36": ("sail_in1k", 1.0, "imagenet"),
    "convit_base": ("fb_in1k", 0.875, "imagenet"),
    "convit_small": ("fb_in1k", 0.875, "imagenet"),
    "convit_tiny": ("fb_in1k", 0.875, "imagenet"),
    "convnext_atto": ("d2_in1k", 0.875, "imagenet"),
    "convnext_base": ("fb_in22k_ft_in1k", 0.875, "imagenet"),
    "convnext_femto": ("d1_in1k", 0.875, "imagenet"),
    "convnext_large": ("fb_in22k_ft_in1k", 0.875, "imagenet"),
    "convnext_nano": ("in12k_ft_in1k", 0.95, "imagenet"),
    "convnext_pico": ("d1_in1k", 0.875, "imagenet"),
    "convnext_small": ("in12k_ft_in1k", 0.95, "imagenet"),
    "convnext_tiny": ("in12k_ft_in1k", 0.95, "imagenet"),
    "deit_small_distilled_patch16_224": ("fb_in1k", 0.9, "imagenet"),
    "deit_tiny_patch16_224": ("fb_in1k", 0.9, "imagenet"),
    "ecaresnet101d": ("miil_in1k", 0.875, "imagenet"),
    "ecaresnet26t": ("ra2_in1k", 0.875, "imagenet"),
    "ecaresnet50d": ("miil_in1k", 0.875, "imagenet"),
    "ecaresnet50t": ("ra2_in1k", 0.875, "imagenet"),
    "ecaresnetlight": ("miil_in1k", 0.875, "imagenet"),
    "fasternet_l": ("in1k", 1.0, "imagenet"),
    "fasternet_m": ("in1k", 1.0, "imagenet"),
    "fasternet_s": ("in1k", 1.0, "imagenet"),
    "fasternet_t0": ("in1k", 1.0, "imagenet"),
    "fasternet_t1": ("in1k", 1.0, "imagenet"),
    "fasternet_t2": ("in1k", 1.0, "imagenet"),
    "ghostnetv2_100": ("in1k", 0.875, "imagenet"),
    "ghostnetv2_130": ("in1k", 0.875, "imagenet"),
    "ghostnetv2_160": ("in1k", 0.875, "imagenet"),
    "inception_next_atto": ("sail_in1k", 0.875, "imagenet"),
    "inception_next_base": ("sail_in1k", 0.95, "imagenet"),
    "inception_next_small": ("sail_in1k", 0.875, "imagenet"),
    "inception_next_tiny": ("sail_in1k", 0.875, "imagenet"),
    "mixer_b16_224": ("goog_in21k_ft_in1k", 0.875, "inception"),
    "mixer_l16_224": ("goog_in21k_ft_in1k", 0.875, "inception"),
    "mixer_s16_224": ("untrained", 0.875, "inception"),
    "nextvit_base": ("bd_in1k", 0.95, "imagenet"),
    "nextvit_large": ("bd_in1k", 0.95, "imagenet"),
    "nextvit_small": ("bd_in1k", 0.95, "imagenet"),
    "poolformer_m36": ("sail_in1k", 0.95, "imagenet"),
    "poolformer_m48": ("sail_in1k", 0.95, "imagenet"),
    "poolformer_s12": ("sail_in1k", 0.9, "imagenet"),
    "poolformer_s24": ("sail_in1k", 0.9, "imagenet"),
    "poolformer_s36": ("sail_in1k", 0.9, "imagenet"),
    "poolformerv2_m36": ("sail_in1k", 1.0, "imagenet"),
    "poolformerv2_m48": ("sail_in1k", 1.0, "imagenet"),
    "poolformerv2_s12": ("sail_in1k", 1.0, "imagenet"),
    "poolformerv2_s24": ("sail_in1k", 1.0, "imagenet"),
    "poolformerv2_s36": ("sail_in1k", 1.0, "imagenet"),
    "resnet101": ("a1h_in1k", 0.95, "imagenet"),
    "resnet50": ("a1_in1k", 0.95, "imagenet"),
    "swin_base_patch4_window7_224": ("ms_in22k_ft_in1k", 0.9, "imagenet"),
    "swin_small_patch4_window7_224": ("ms_in22k_ft_in1k", 0.9, "imagenet"),
    "swin_tiny_patch4_window7_224": ("ms_in1k", 0.9, "imagenet"),
    "vit_base_patch16_224": ("augreg2_in21k_ft_in1k", 0.9, "inception"),
    "vit_small_patch16_224": ("augreg_in21k_ft_in1k", 0.9, "inception"),
}
