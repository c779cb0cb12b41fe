"""CCNet: the dilated ResNet-101 + RCCA segmentation recipe against the official structure (speedinghzl/CCNet,
networks/ccnet.py) by formula, its output sizes, the head's recurrence and classifier; and a PoolFormerV2-S12 with
criss-cross attention in its last two stages for classification."""
import pytest
import torch

import metablocks
from metablocks.analysis import count_params


def conv(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def official_rcca_params(in_channels: int = 2048, out_channels: int = 512, num_classes: int = 19) -> int:
    """RCCAModule(2048, 512, num_classes): conva, cca (C/8 query/key, C value, gamma), convb, bottleneck."""
    inter = in_channels // 4
    conva = conv(in_channels, inter, 3) + bn(inter)
    cca = 2 * conv(inter, inter // 8, 1, bias=True) + conv(inter, inter, 1, bias=True) + 1
    convb = conv(inter, inter, 3) + bn(inter)
    bottleneck = conv(in_channels + inter, out_channels, 3) + bn(out_channels) + conv(out_channels, num_classes, 1, bias=True)
    return conva + cca + convb + bottleneck


def official_backbone_params(layers: tuple[int, ...] = (3, 4, 23, 3)) -> int:
    """The official ResNet(Bottleneck, [3, 4, 23, 3]): deep stem 3-64-64-128, inplanes 128, 1x1 + BN projections."""
    total = conv(3, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64) + conv(64, 128, 3) + bn(128)
    inplanes = 128
    for planes, blocks in zip((64, 128, 256, 512), layers):
        for i in range(blocks):
            c_in = inplanes if i == 0 else planes * 4
            total += conv(c_in, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            total += conv(planes, planes * 4, 1) + bn(planes * 4)
        total += conv(inplanes, planes * 4, 1) + bn(planes * 4)  # every stage projects (stride or width change)
        inplanes = planes * 4
    return total


@pytest.fixture(scope="module")
def ccnet():
    return metablocks.create_model("ccnet_resnet101")


def test_params_equal_the_official_structure(ccnet) -> None:
    assert count_params(ccnet.head) == official_rcca_params() == 23_934_100
    assert count_params(ccnet) - count_params(ccnet.head) == official_backbone_params() == 42_623_936
    assert count_params(ccnet) == 66_558_036


def test_dilated_backbone(ccnet) -> None:
    """Output stride 8: stages 3 and 4 unstrided, every 3x3 dilated by 2 and 4 (the first block too, as official)."""
    for stage, dilation in zip(ccnet.stages[2:], (2, 4)):
        convs = [b.token_mixer.conv2 for b in stage.blocks]
        assert {(c.dilation[0], c.padding[0], c.stride[0]) for c in convs} == {(dilation, dilation, 1)}
    assert [info["reduction"] for info in ccnet.feature_info] == [4, 8, 8, 8]
    assert ccnet.stem.pool.ceil_mode and [ccnet.stem.conv1.out_channels, ccnet.stem.conv3.out_channels] == [64, 128]


def test_forward_backward_small(ccnet) -> None:
    """(B, 19, H/8, W/8) logits, not upsampled: 65 -> 9 (the official (H - 1)/8 + 1 for sizes 8k + 1)."""
    ccnet.train()
    x = torch.randn(2, 3, 65, 65)
    out = ccnet(x)
    assert out.shape == (2, 19, 9, 9)
    out.mean().backward()
    assert ccnet.head.cca.gamma.grad is not None and ccnet.stem.conv1.weight.grad is not None
    ccnet.zero_grad()


@pytest.mark.slow
@pytest.mark.parametrize("size, ceil_mode, out", [(769, True, 97), (512, True, 65), (512, False, 64)])
def test_output_size(size: int, ceil_mode: bool, out: int) -> None:
    """The official max pool rounds up (ceil_mode), so 512 gives 65x65; a floor-mode pool gives the 64x64 of H/8."""
    model = metablocks.create_model("ccnet_resnet101", img_size=size,
                                    overrides={"stem.ceil_mode": ceil_mode}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 19, out, out)


def test_rcca_head_recurrence_and_classifier(ccnet) -> None:
    head = ccnet.head.eval()
    assert head.cca.recurrence == 2 and head.cca.residual
    x = torch.randn(1, 2048, 9, 9)
    with torch.no_grad():
        y = head.conva(x)
        assert torch.equal(head.cca(y), y)  # gamma starts at 0: x + 0 * A(x), twice
        head.cca.gamma.fill_(0.5)
        once = y + 0.5 * head.cca.criss_cross(y)
        assert torch.allclose(head.cca(y), once + 0.5 * head.cca.criss_cross(once), atol=1e-5)
        assert head(x, pre_logits=True).shape == (1, 512, 9, 9)
        head.cca.gamma.zero_()
    assert isinstance(head.bottleneck[3], torch.nn.Dropout2d) and head.bottleneck[3].p == 0.1
    assert isinstance(head.conva[2], torch.nn.LeakyReLU) and head.conva[2].negative_slope == 0.01
    ccnet.reset_classifier(150)  # e.g. ADE20K
    assert ccnet.get_classifier().out_channels == 150 and ccnet.recipe.num_classes == 150
    with torch.no_grad():
        assert ccnet.eval()(torch.randn(1, 3, 33, 33)).shape == (1, 150, 5, 5)


def test_ccformer_s12() -> None:
    """PoolFormerV2-S12 with criss-cross attention (R = 2, query/key C/8) in stages 3 and 4; everything else equal."""
    model = metablocks.create_model("ccformer_s12")
    base = count_params(metablocks.create_model("poolformerv2_s12"))

    def cca(dim: int) -> int:
        return 2 * (dim * (dim // 8) + dim // 8) + dim * dim + dim + 1

    assert count_params(model) == base + 6 * cca(320) + 2 * cca(512) == 13_318_760
    assert [s.token_mixer[0].name for s in model.recipe.stages] == ["pooling", "pooling", "criss_cross", "criss_cross"]
    assert not model.stages[2].blocks[0].token_mixer.residual  # the block adds its shortcut once
    for size in (224, 160):
        model = metablocks.create_model("ccformer_s12", img_size=size)
        x = torch.randn(1, 3, size, size)
        out = model(x)
        assert out.shape == (1, 1000)
        out.sum().backward()
        assert model.stages[3].blocks[0].token_mixer.gamma.grad is not None
