"""The timm conventions a timm user reaches for first: names, kwargs, pretrained_cfg, fine-tuning from a checkpoint,
forward_intermediates / features_only, and the block API snags (issue 10, points 1, 4 and 8)."""
import fnmatch
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

import metablocks
from metablocks.analysis.macs import count_macs
from metablocks.model import resolve_name, timm_names
from metablocks.recipe.loader import shipped_recipes

# --- point 1: set_token_mixer indices ---------------------------------------------------------------------------


def test_set_token_mixer_refuses_out_of_range_stages_and_blocks() -> None:
    model = metablocks.create_model("poolformer_s12", img_size=64)
    with pytest.raises(metablocks.RecipeError, match=r"stages=\[5\]: poolformer_s12 has 4 stages \(indices 0..3, or "
                                                     r"-4..-1 from the end\); out of range: 5"):
        model.set_token_mixer("identity", stages=[5])
    with pytest.raises(metablocks.RecipeError, match=r"out of range: 100"):
        model.set_token_mixer("identity", stages=[100])
    with pytest.raises(metablocks.RecipeError, match=r"blocks=\[5\]: stage 0 has depth 2, so it has 2 blocks "
                                                     r"\(indices 0..1, or -2..-1 from the end\); out of range: 5"):
        model.set_token_mixer("identity", stages=[0], blocks=[5])
    assert [c.token_mixer[0].type for c in model.recipe.stages] == ["pooling"] * 4  # nothing swapped


def test_set_token_mixer_negative_indices_count_from_the_end() -> None:
    model = metablocks.create_model("poolformer_s12", img_size=64)
    model.set_token_mixer("identity", stages=[-1], blocks=[-1])
    assert [m.type for m in model.recipe.stages[3].token_mixer] == ["pooling", "identity"]
    assert [c.token_mixer[0].type for c in model.recipe.stages[:3]] == ["pooling"] * 3


def test_swapping_in_a_mixer_of_another_layout_keeps_the_weight_shapes() -> None:
    model = metablocks.create_model("poolformer_s12", img_size=64)
    before = {k: v.shape for k, v in model.stages[1].state_dict().items() if ".token_mixer." not in k}
    fc1 = model.stages[1].blocks[0].channel_mixer.fc1.weight.clone()
    model.set_token_mixer({"type": "attention", "head_dim": 32}, stages=[1])
    after = {k: v.shape for k, v in model.stages[1].state_dict().items() if ".token_mixer." not in k}
    assert after == before and before["blocks.0.channel_mixer.fc1.weight"] == (512, 128, 1, 1)
    assert torch.equal(model.stages[1].blocks[0].channel_mixer.fc1.weight, fc1)
    assert model.recipe.stages[1].layout == "channels_first"  # pinned, so the recipe rebuilds the same shapes
    rebuilt = metablocks.build_model(model.recipe)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_swapping_with_the_stream_following_the_mixer_says_what_changed_shape() -> None:
    model = metablocks.create_model("poolformer_s12", img_size=64)
    with pytest.warns(UserWarning, match=r"stage 2's new layout changed weight shapes: reshaped \(values kept\): "
                                         r"stages\.2\.blocks\.0\.channel_mixer\.fc1\.weight"):
        model.set_token_mixer({"type": "attention", "head_dim": 32}, stages=[2], keep_layout=False)
    assert model.stages[2].blocks[0].channel_mixer.fc1.weight.shape == (1280, 320)


# --- point 8: block API ------------------------------------------------------------------------------------------


def test_count_macs_takes_the_standard_layout_for_a_block_of_a_model() -> None:
    block = metablocks.create_model("caformer_s18").stages[2].blocks[0]
    assert block.io_layout == "channels_last"
    standard, own = count_macs(block, (320, 14, 14)), count_macs(block, (14, 14, 320))
    assert standard.total == own.total == 266_058_240
    assert standard.by_stage == own.by_stage and standard.by_stage["token_mixer"] == 104_867_840
    with pytest.raises(ValueError, match=r"this block has width 320, so input_size is \(C, H, W\) = \(320, H, W\) "
                                         r"\(or its own layout, \(H, W, 320\)\); got \(3, 14, 14\)"):
        count_macs(block, (3, 14, 14))


def test_metaformer_block_with_a_window_mixer_asks_for_resolution_by_name() -> None:
    with pytest.raises(metablocks.RecipeError, match=r"window_attention is built for the size of its input map: give "
                                                     r"the block that size, MetaFormerBlock\(dim=96, \.\.\., "
                                                     r"resolution=\(H, W\)\)"):
        metablocks.MetaFormerBlock(dim=96, token_mixer={"type": "window_attention", "num_heads": 3})
    block = metablocks.MetaFormerBlock(dim=96, resolution=(14, 14), token_mixer={"type": "window_attention",
                                                                               "num_heads": 3})
    assert block(torch.randn(1, 96, 14, 14)).shape == (1, 96, 14, 14)


# --- point 4: names -----------------------------------------------------------------------------------------------


def test_every_timm_name_resolves_to_its_recipe() -> None:
    names = timm_names()
    mirrored = [name for name in metablocks.list_recipes() if metablocks.load_recipe(name).timm_name]
    assert len(names) == len(mirrored) >= 47 and names["swin_tiny_patch4_window7_224"] == "swin_t"  # one per recipe
    for timm_name, recipe in names.items():
        assert resolve_name(timm_name) == recipe
    assert resolve_name("convnext_atto.d2_in1k") == "convnext_atto"  # the tag whose data config we mirror
    with pytest.raises(metablocks.RecipeError, match=r"'convnext_atto.fb_in22k': convnext_atto mirrors the pretrained "
                                                     r"config of convnext_atto.d2_in1k only"):
        metablocks.create_model("convnext_atto.fb_in22k")


def test_create_model_by_timm_name() -> None:
    model = metablocks.create_model("swin_tiny_patch4_window7_224", img_size=64)
    assert model.recipe.name == "swin_t" and model.pretrained_cfg["timm_name"] == "swin_tiny_patch4_window7_224"


def test_list_recipes_filters_like_timm_list_models() -> None:
    everything = sorted(shipped_recipes())
    assert metablocks.list_recipes() == everything
    formers = metablocks.list_recipes("*former*")
    assert formers == [n for n in everything if fnmatch.fnmatchcase(n, "*former*")] and "caformer_s18" in formers
    assert metablocks.list_recipes("swin_tiny*") == ["swin_t"]  # a timm name matches too
    assert metablocks.list_recipes(["poolformer_s*", "convnext_a*"], exclude_filters="*s24") == \
        ["convnext_atto", "poolformer_s12", "poolformer_s36"]


# --- point 4: kwargs ----------------------------------------------------------------------------------------------


def test_create_model_takes_timms_kwargs() -> None:
    model = metablocks.create_model("convnext_atto", pretrained=False, num_classes=10, global_pool="max",
                                    drop_rate=0.25, drop_path_rate=0.1, in_chans=1)
    recipe = model.recipe
    assert (recipe.num_classes, recipe.in_chans, recipe.drop_path_rate) == (10, 1, 0.1)
    assert (recipe.head.pool, recipe.head.drop_rate) == ("max", 0.25) and model.head.drop.p == 0.25
    assert model.stem.conv.weight.shape[1] == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"global_pool='avgmax' is not supported; allowed: 'avg', 'max', ''"):
        model.reset_classifier(0, "avgmax")
    with pytest.raises(metablocks.RecipeError, match=r"feature_cls='fx' is not supported; allowed: None or 'getter'"):
        metablocks.create_model("convnext_atto", features_only=True, feature_cls="fx")


def test_no_global_pool_gives_the_map_as_timm() -> None:
    model = metablocks.create_model("caformer_s18", num_classes=0, global_pool="", img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, features = model(x), model.forward_features(x)
        assert out.shape == (1, 512, 2, 2)
        expected = model.head.norm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the head's norm per position
        assert torch.equal(out, expected)
        model.reset_classifier(10, "avg")
        assert model(x).shape == (1, 10) and model.recipe.head.pool == "avg"


def test_head_hidden_size_is_what_pre_logits_gives() -> None:
    model = metablocks.create_model("inception_next_atto", img_size=64).eval()
    assert (model.num_features, model.head_hidden_size) == (320, 960)  # timm's MlpClassifierHead: 3 x 320 hidden
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 960)
        model.reset_classifier(0)
        assert model(x).shape == (1, 960)
    assert metablocks.create_model("convnext_atto").head_hidden_size == 320


# --- point 4: pretrained_cfg --------------------------------------------------------------------------------------


def test_pretrained_cfg_mirrors_timm_and_names_our_modules() -> None:
    model = metablocks.create_model("caformer_s18")
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    theirs = timm.models.get_pretrained_cfg("caformer_s18").to_dict()
    for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "num_classes", "pool_size",
                "tag"):
        assert cfg[key] == theirs[key], key
    assert (cfg["first_conv"], cfg["classifier"], cfg["timm_name"]) == ("stem.conv", "head.fc.fc2", "caformer_s18")
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    mixer = metablocks.create_model("mixer_s16_224").pretrained_cfg
    assert (mixer["mean"], mixer["fixed_input_size"], mixer["classifier"]) == ((0.5, 0.5, 0.5), True, "head.fc")


def test_timm_data_config_and_transform_work_on_our_model() -> None:
    ours = timm.data.resolve_data_config({}, model=metablocks.create_model("swin_tiny_patch4_window7_224"))
    theirs = timm.data.resolve_data_config({}, model=timm.create_model("swin_tiny_patch4_window7_224"))
    assert ours == theirs == dict(input_size=(3, 224, 224), interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                                  std=(0.229, 0.224, 0.225), crop_pct=0.9, crop_mode="center")
    transform = timm.data.create_transform(**ours)
    from PIL import Image

    assert transform(Image.new("RGB", (300, 260))).shape == (3, 224, 224)


# --- point 4: pretrained / fine-tuning ----------------------------------------------------------------------------


def test_pretrained_without_a_file_says_what_it_can_do() -> None:
    with pytest.raises(metablocks.RecipeError, match=r"pretrained: metablocks downloads no weights \(there is no model "
                                                     r"hub here\); load a local timm or metablocks checkpoint"):
        metablocks.create_model("resnet50", pretrained=True)


@pytest.fixture(scope="module")
def timm_convnext(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    theirs = timm.create_model("convnext_atto").eval()
    path = str(tmp_path_factory.mktemp("ckpt") / "convnext_atto.safetensors")
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, path)
    return theirs, path


def test_fine_tune_from_a_timm_checkpoint_with_another_head(timm_convnext: tuple[torch.nn.Module, str]) -> None:
    theirs, path = timm_convnext
    model = metablocks.create_model("convnext_atto", pretrained=True, num_classes=10,
                                    pretrained_cfg_overlay=dict(file=path))
    assert model.pretrained_cfg["file"] == path
    ours, source = model.state_dict(), theirs.state_dict()
    assert torch.equal(ours["stem.conv.weight"], source["stem.0.weight"])
    assert torch.equal(ours["stages.3.blocks.1.channel_mixer.fc2.weight"],
                       source["stages.3.blocks.1.mlp.fc2.weight"].flatten(1))  # timm: a 1x1 conv
    assert ours["head.fc.weight"].shape == (10, 320)  # fresh: timm's is (1000, 320)
    # the same as one call on a built model; one channel in: the RGB filters summed, as timm's adapt_input_conv
    grey = metablocks.create_model("convnext_atto", num_classes=10, in_chans=1)
    assert metablocks.load_pretrained(grey, path) == ["head.fc.bias", "head.fc.weight"]
    assert torch.equal(grey.stem.conv.weight, source["stem.0.weight"].sum(1, keepdim=True))
    assert torch.equal(grey.stages[0].blocks[0].norm1.weight, source["stages.0.blocks.0.norm.weight"])


def test_checkpoint_path_loads_this_exact_model_strictly(tmp_path, timm_convnext) -> None:
    trained = metablocks.create_model("convnext_atto", num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "ours.pth")
    again = metablocks.create_model("convnext_atto", num_classes=10, checkpoint_path=tmp_path / "ours.pth")
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match=r"shape mismatch: head.fc.bias ours \(10,\) vs checkpoint \(1000,\)"):
        metablocks.create_model("convnext_atto", num_classes=10, checkpoint_path=timm_convnext[1])


def test_train_fine_tunes_from_a_checkpoint_with_a_fresh_head(tmp_path, timm_convnext) -> None:
    from metablocks.data import DataConfig
    from metablocks.train.config import TrainConfig
    from metablocks.train.loop import train

    result = train("convnext_atto", data=DataConfig(source="digits", img_size=32, limit_train=64, limit_val=32),
                   config=TrainConfig(epochs=1, batch_size=32, threads=1), pretrained=timm_convnext[1])
    model = result["_model"]
    assert model.head.fc.weight.shape == (10, 320) and model.stem.conv.weight.shape[1] == 1
    first = timm_convnext[0].state_dict()["stem.0.weight"].sum(1, keepdim=True)
    assert (model.stem.conv.weight - first).abs().max() < 0.05  # started there, one epoch of AdamW since


# --- point 4 / 10: intermediates and features ---------------------------------------------------------------------


def test_forward_intermediates_has_timms_signature_and_return() -> None:
    model = metablocks.create_model("convnext_atto").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and len(maps) == 4
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape[1] for m in last_two] == [160, 320] and torch.equal(last_two[1], maps[3])
        early, (first,) = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.equal(early, maps[0]) and torch.equal(first, maps[0])
        (nhwc,) = model.forward_intermediates(x, indices=[-1], output_fmt="NHWC", intermediates_only=True)
        assert torch.equal(nhwc, maps[3].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"convnext_atto has 4 feature levels \(-4..3\), got 4"):
        model.forward_intermediates(x, indices=[4])


def test_forward_intermediates_norm_is_the_heads_map_norm() -> None:
    model = metablocks.create_model("mixer_s16_224").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (plain,) = model.forward_intermediates(x, indices=1, intermediates_only=True)
        (normed,) = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert torch.equal(normed, model.head.norm(plain))


def test_features_only_feature_info_is_timms_feature_info() -> None:
    features = metablocks.create_model("convnext_atto", features_only=True, out_indices=(1, 3), feature_cls="getter")
    info = features.feature_info
    assert (info.channels(), info.reduction(), info.module_name()) == ([80, 320], [8, 32], ["stages.1", "stages.3"])
    assert len(info) == 2 and info[0] == dict(num_chs=80, reduction=8, module="stages.1")
    assert info.get_dicts(keys=["num_chs"]) == [dict(num_chs=80), dict(num_chs=320)]
    assert timm.models.FeatureInfo(metablocks.create_model("convnext_atto").feature_info, [1, 3]).channels() == \
        info.channels()


def test_isotropic_models_have_a_feature_level_per_block() -> None:
    model = metablocks.create_model("mixer_s16_224").eval()
    assert [i["module"] for i in model.feature_info] == [f"stages.0.blocks.{j}" for j in range(8)]
    features = metablocks.create_model("mixer_s16_224", features_only=True, out_indices=3)
    assert features.out_indices == (5, 6, 7) and len(features.stages[0].blocks) == 8
    early = metablocks.create_model("mixer_s16_224", features_only=True, out_indices=(1,))
    assert len(early.stages[0].blocks) == 2  # blocks past the last level are dropped
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        assert torch.equal(model.stages[0].blocks[5](maps[4].permute(0, 2, 3, 1)).permute(0, 3, 1, 2), maps[5])
        assert torch.equal(maps[-1], model.forward_features(x))
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)  # timm's: the final norm on each
        assert torch.equal(normed[2], model.head.norm(maps[2]))


def test_grad_checkpointing_keeps_intermediates() -> None:
    model = metablocks.create_model("convnext_atto").eval()
    x = torch.randn(1, 3, 64, 64)
    final, _ = model.forward_intermediates(x)
    model.set_grad_checkpointing()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, _ = model.forward_intermediates(x)
    assert torch.equal(final, again)
