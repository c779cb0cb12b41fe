"""OSNet (Zhou et al., ICCV 2019) as recipes: the official torchreid code's parameter counts and state_dict (a key/shape
manifest taken once from KaiyangZhou/deep-person-reid ``torchreid/models/osnet.py``,
tests/data/osnet_official_keys.json) that the official converter maps onto ours, and the omni-scale block, its shared
gate, the transition and the re-ID head checked by hand. Measured against the official module (perturbed weights,
256x128): logits and eval embeddings bit-equal (max diff 0.0) for all four widths.

With ``OSNET_OFFICIAL=/path/to/osnet.py`` (the official file) the official model is also built here and compared."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks import RecipeError
from metablocks.components.heads.reid import ReIDHead
from metablocks.components.token_mixers.conv_pool import ConvPool
from metablocks.components.token_mixers.os_block import OSBlock
from metablocks.interop.official import convert_official, families
from metablocks.interop.official.osnet import convert_osnet
from zoo_timm import n_params, perturb

MANIFEST = json.loads((Path(__file__).parent / "data" / "osnet_official_keys.json").read_text())
# recipe: (official parameters with the 1000-way classifier, the paper's table (params_m, mult-adds G at 256x128))
SIZES = {
    "osnet_x1_0": (2_682_508, (2.2, 0.9789)),
    "osnet_x0_75": (1_798_754, (1.3, 0.5718)),
    "osnet_x0_5": (1_143_034, (0.6, 0.2729)),
    "osnet_x0_25": (714_864, (0.2, 0.0823)),
}


def on_meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return metablocks.create_model(name)


@pytest.mark.parametrize("name", list(SIZES))
def test_params_equal_the_official_code_and_the_recipe_records_the_paper(name: str) -> None:
    model = on_meta(name)
    official, (params_m, macs_g) = SIZES[name]
    assert n_params(model) == official == MANIFEST["params"][name]
    backbone = official - n_params(model.head.fc)  # the paper counts the model without its identity classifier
    assert round(backbone / 1e6, 1) == params_m
    recipe = model.recipe
    assert recipe.img_size == (256, 128) and recipe.paper.size == (256, 128) and recipe.num_classes == 1000
    assert (recipe.paper.params_m, recipe.paper.macs_g, recipe.paper.counts) == (params_m, macs_g, "backbone")
    assert recipe.paper.title == "Omni-Scale Feature Learning for Person Re-Identification"


@pytest.mark.parametrize("name", list(SIZES))
def test_official_manifest_loads_strictly(name: str) -> None:
    theirs = {k: torch.zeros(shape) for k, shape in MANIFEST["keys"][name].items()}
    model = convert_official(theirs, name)  # every key placed, nothing missing, every shape equal
    assert model.official_dropped == [] and "osnet" in families()
    assert len(convert_osnet(theirs)) == len(theirs) == len(model.state_dict())


def test_converted_weights_land_where_they_belong() -> None:
    gen = torch.Generator().manual_seed(0)
    theirs = {k: torch.randn(shape, generator=gen) if shape else torch.tensor(0)
              for k, shape in MANIFEST["keys"]["osnet_x0_25"].items()}
    model = convert_official(copy.deepcopy(theirs), "osnet_x0_25")
    s = model.stages
    assert torch.equal(s[0].blocks[0].shortcut.conv.weight, theirs["conv2.0.downsample.conv.weight"])
    assert torch.equal(s[1].blocks[0].token_mixer.conv.weight, theirs["conv2.2.0.conv.weight"])  # the transition
    assert torch.equal(s[1].blocks[1].token_mixer.streams[3][2].conv2.weight, theirs["conv3.0.conv2d.2.conv2.weight"])
    assert torch.equal(s[2].blocks[2].token_mixer.gate.up.bias, theirs["conv4.1.gate.fc2.bias"])
    assert torch.equal(s[2].blocks[0].token_mixer.bn.running_var, theirs["conv3.2.0.bn.running_var"])
    assert torch.equal(s[3].downsample.layers[0].norm.weight, theirs["conv5.bn.weight"])
    assert torch.equal(model.head.norm.running_mean, theirs["fc.1.running_mean"])
    assert torch.equal(model.head.fc.weight, theirs["classifier.weight"])


def test_os_block_shares_one_gate_across_its_four_streams() -> None:
    model = metablocks.create_model("osnet_x0_25").eval()
    perturb(model)
    block = model.stages[1].blocks[1]  # 64 -> 96: mid 24, gate hidden 24 // 16 = 1, a 1x1 projection shortcut
    mixer = block.token_mixer
    assert isinstance(mixer, OSBlock) and [len(s) for s in mixer.streams] == [1, 2, 3, 4]
    assert mixer.gate.down.weight.shape == (1, 24, 1, 1) and block.shortcut.conv.weight.shape == (96, 64, 1, 1)
    assert sum(isinstance(m, type(mixer.gate)) for m in mixer.modules()) == 1
    x = torch.randn(2, 64, 8, 4)
    with torch.no_grad():
        m = mixer.conv1(x)

        def gate(t):
            return t * torch.sigmoid(mixer.gate.up(F.relu(mixer.gate.down(t.mean((2, 3), keepdim=True)))))

        def light(layer, t):
            return F.relu(layer.bn(F.conv2d(F.conv2d(t, layer.conv1.weight), layer.conv2.weight, padding=1, groups=24)))

        streams = []
        for stream in mixer.streams:
            t = m
            for layer in stream:
                t = light(layer, t)
            streams.append(gate(t))
        by_hand = F.relu(block.shortcut(x) + mixer.conv3(streams[0] + streams[1] + streams[2] + streams[3]))
        assert torch.allclose(block(x.clone()), by_hand, atol=1e-5)


def test_transition_is_a_plain_strided_first_block() -> None:
    model = metablocks.create_model("osnet_x0_25").eval()
    block = model.stages[1].blocks[0]
    assert isinstance(block.token_mixer, ConvPool) and not hasattr(block, "shortcut") and block.post_act is None
    x = torch.randn(1, 64, 8, 4)
    with torch.no_grad():
        t = block.token_mixer
        expected = F.avg_pool2d(F.relu(t.bn(F.conv2d(x, t.conv.weight))), 2)
        assert torch.equal(block(x), expected) and expected.shape == (1, 64, 4, 2)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 16]
    assert [f["num_chs"] for f in model.feature_info] == [64, 96, 128, 128]


def test_reid_head_logits_embedding_and_eval_features() -> None:
    model = metablocks.create_model("osnet_x0_25").eval()
    head = model.head
    assert isinstance(head, ReIDHead) and model.head_hidden_size == 512
    perturb(model)
    x = torch.randn(2, 128, 16, 8)
    with torch.no_grad():
        v = F.relu(head.norm(head.embed(x.mean((2, 3)))))
        assert torch.allclose(head(x, pre_logits=True), v, atol=1e-6)
        assert torch.allclose(head(x), head.fc(v), atol=1e-6)
        official_eval = metablocks.create_model("osnet_x0_25", head={"eval_features": True}).eval()
        official_eval.load_state_dict(model.state_dict())
        image = torch.randn(2, 3, 64, 32)
        assert torch.allclose(official_eval(image), model.forward_head(model.forward_features(image), pre_logits=True))
        assert official_eval.train()(image).shape == (2, 1000)  # training: the identity logits
    model.reset_classifier(751)  # Market-1501's training identities
    assert model.head.fc.out_features == 751 and model.head.embed.out_features == 512
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 512, 4, 2)  # the embedding at every position


def test_bad_settings_are_located_errors() -> None:
    with pytest.raises(RecipeError) as err:
        metablocks.build_model("osnet_x0_25", overrides={"block.token_mixer.gate_reduction": 32})
    text = str(err.value)
    assert ("stages[0].token_mixer: token_mixer 'os_block': gate_reduction=32 leaves the channel gate no hidden unit at "
            "the bottleneck width 16 (dim=64 // reduction=4; 16 // 32 = 0)") in text
    with pytest.raises(RecipeError) as err:
        metablocks.build_model("osnet_x0_25", img_size=(200, 100))  # 50x25 after the stem: the pool would floor 25
    assert ("token_mixer 'conv_pool': the average pool of stride 2 floors a 50x25 map (to 25x12, not the 25x13 the "
            "next blocks are built for): give an img_size whose map here is a multiple of 2") in str(err.value)


OFFICIAL = os.environ.get("OSNET_OFFICIAL")


@pytest.mark.skipif(not OFFICIAL, reason="set OSNET_OFFICIAL to torchreid/models/osnet.py of the official repository")
@pytest.mark.parametrize("name", list(SIZES))
def test_logits_and_embeddings_equal_the_official_model(name: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("osnet_official", OFFICIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    theirs = getattr(module, name)(num_classes=1000, pretrained=False).eval()
    assert {k: list(v.shape) for k, v in theirs.state_dict().items()} == MANIFEST["keys"][name]
    perturb(theirs)
    ours = convert_official(copy.deepcopy(theirs.state_dict()), name)
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        features = theirs(x)  # the official eval forward returns the embedding
        assert (ours(x) - theirs.classifier(features)).abs().max().item() <= 1e-5
        assert (ours.forward_head(ours.forward_features(x), pre_logits=True) - features).abs().max().item() <= 1e-5
