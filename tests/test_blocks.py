"""The block as residual branches: shapes, layouts, scales, drop path, and the standalone MetaFormerBlock."""
import pytest
import torch
import torch.nn.functional as F

import metablocks
from metablocks.blocks import Block, BlockConfig, DropPath
from metablocks.components.acts.elementwise import inplace_act
from metablocks.registry import get


def test_metaformer_block_is_two_prenorm_residual_branches() -> None:
    block = metablocks.MetaFormerBlock(dim=16, token_mixer="pooling", norm={"type": "groupnorm"},
                                       channel_mixer={"type": "mlp", "ratio": 2}).eval()
    x = torch.randn(2, 16, 5, 5)
    y = x + block.token_mixer(block.norm1(x))
    y = y + block.channel_mixer(block.norm2(y))
    assert torch.allclose(block(x), y, atol=1e-6)
    assert sorted(n for n, _ in block.named_children()) == ["channel_mixer", "norm1", "norm2", "token_mixer"]


def test_convnext_shape_is_one_branch() -> None:
    block = metablocks.MetaFormerBlock(dim=8, shape="convnext", token_mixer={"type": "sepconv", "kernel_size": 3},
                                       norm="layernorm", layer_scale=0.5).eval()
    x = torch.randn(1, 8, 6, 6)
    y = block.channel_mixer(block.norm1(block.token_mixer(x)))
    assert torch.allclose(block(x), x + 0.5 * y, atol=1e-6)
    assert not hasattr(block, "norm2")


def test_spelled_out_branches_res_scale_and_post_act() -> None:
    block = metablocks.MetaFormerBlock(dim=4, branches=[["token_mixer"], ["channel_mixer"]], norm=None,
                                       token_mixer="identity", res_scale=2.0, post_act="relu").eval()
    x = torch.randn(1, 4, 3, 3)
    y = 2 * x + x  # identity mixer on a res-scaled shortcut
    y = F.relu(2 * y + block.channel_mixer(y))  # post_act once, after the block's last residual sum
    assert torch.allclose(block(x), y, atol=1e-6)


def test_attention_block_runs_channels_last_inside_and_nchw_outside() -> None:
    block = metablocks.MetaFormerBlock(dim=32, token_mixer={"type": "attention", "head_dim": 16})
    assert block.layout == "channels_last" and block.io_layout == "channels_first"
    assert type(block.channel_mixer.fc1).__name__ == "Linear"  # the MLP follows the stream: linear layers, no permutes
    assert block(torch.randn(2, 32, 4, 4)).shape == (2, 32, 4, 4)


def test_pinned_layout() -> None:
    block = metablocks.MetaFormerBlock(dim=8, token_mixer="pooling", layout="channels_last", norm="layernorm")
    assert block.layout == "channels_last" and type(block.channel_mixer.fc1).__name__ == "Linear"
    ref = metablocks.MetaFormerBlock(dim=8, token_mixer="pooling", norm="layernorm")
    assert type(ref.channel_mixer.fc1).__name__ == "Conv2d"
    ref.load_state_dict({k: v.reshape(ref.state_dict()[k].shape) for k, v in block.state_dict().items()})
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(block(x), ref(x), atol=1e-6)


def test_a_stage_of_attention_permutes_once_each_way() -> None:
    model = metablocks.create_model("caformer_s18")
    stage = model.stages[3]
    assert stage._perms[0] == (0, 2, 3, 1) and all(p is None for p in stage._perms[1:])
    assert all(b._in_perm is None and b._out_perm is None for b in stage.blocks)
    assert all(s._perms == (None,) * len(s.blocks) for s in model.stages[:2])


def test_drop_path_is_linear_over_depth_and_per_sample() -> None:
    model = metablocks.create_model("poolformer_s12", drop_path_rate=0.11)
    rates = [b.drop_path1.p if hasattr(b, "drop_path1") else 0.0 for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.11 * i / 11 for i in range(12)])
    drop = DropPath(0.5).train()
    out = drop(torch.ones(1000, 3))
    kept = (out[:, 0] > 0).float()
    assert torch.equal(out, kept[:, None].expand(-1, 3) * 2.0) and 400 < kept.sum() < 600
    assert torch.equal(drop.eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_layer_scale_init() -> None:
    model = metablocks.create_model("poolformer_m36")
    assert torch.equal(model.stages[0].blocks[0].layer_scale1.scale, torch.full((96,), 1e-6))


def test_block_config_cycles_per_block() -> None:
    stage = metablocks.load_recipe("poolformer_s12", overrides={"stages[0].token_mixer": ["pooling", "identity"]}).stages[0]
    assert [stage.block(j).token_mixer.name for j in range(4)] == ["pooling", "identity", "pooling", "identity"]
    assert isinstance(stage.block(0), BlockConfig) and not isinstance(stage.block(0), type(stage))


def test_block_backward() -> None:
    block = Block(16, BlockConfig(token_mixer="attention", norm="layernorm"), io_layout="channels_first")
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_inference_writes_the_residual_sum_into_the_branch_output_only() -> None:
    """Eager no-grad: the sum goes into the channel MLP's output tensor (no new allocation); with autograd it does not
    (the branch may have saved it), and an identity branch never overwrites the block's input."""
    block = metablocks.MetaFormerBlock(dim=8, token_mixer="pooling", norm={"type": "groupnorm"}, layer_scale=0.5,
                                       res_scale=2.0)
    seen: list[torch.Tensor] = []
    block.channel_mixer.register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        expected = block.norm2(0.5 * block.token_mixer(block.norm1(x)) + 2 * x)
        expected = 2 * (0.5 * block.token_mixer(block.norm1(x)) + 2 * x) + 0.5 * block.channel_mixer(expected)
        seen.clear()
        out = block(x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert out.data_ptr() == seen[-1].data_ptr()  # written in place
    out = block(x)
    assert out.data_ptr() != seen[-1].data_ptr() and out.requires_grad

    identity = metablocks.MetaFormerBlock(dim=4, branches=[["token_mixer"]], norm=None, token_mixer="identity")
    x = torch.randn(1, 4, 3, 3)
    before = x.clone()
    with torch.inference_mode():
        assert torch.equal(identity(x), 2 * before)
    assert torch.equal(x, before)


def test_acts_after_a_norm_run_in_place_where_they_can() -> None:
    model = metablocks.create_model("resnet50", img_size=64)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 1 + 16 * 2 + 16 and all(m.inplace for m in relus)  # stem, 2 per bottleneck, 16 post-acts
    gelu = inplace_act(get("act", "gelu")())  # GELU overwrites its input only without autograd (its backward reads it)
    assert isinstance(gelu, torch.nn.GELU) and gelu.inplace
    x = torch.randn(2, 8)
    expected = torch.nn.functional.gelu(x)
    with torch.no_grad():
        out = gelu(x)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, expected)
    x = torch.randn(2, 8, requires_grad=True)
    out = gelu(x)
    assert out.data_ptr() != x.data_ptr() and torch.equal(out, torch.nn.functional.gelu(x))
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "convit_tiny"])
def test_inference_in_place_paths_give_the_autograd_paths_values(name: str) -> None:
    """GELU and GPSA overwrite their fresh maps without autograd (the residual sums too): the same kernels in the same
    order, so the logits are bit-identical to a forward with autograd on (out of place)."""
    torch.manual_seed(0)
    model = metablocks.create_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        fast = model(x)
    with torch.no_grad():
        no_grad = model(x)
    assert torch.equal(fast, no_grad) and torch.equal(fast, model(x).detach())
