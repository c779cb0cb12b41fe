"""The generic model's timm-like API."""
import torch

import metablocks


def test_forward_features_head_and_pre_logits() -> None:
    model = metablocks.create_model("poolformerv2_s12").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2)
        assert model.forward_head(features, pre_logits=True).shape == (2, 512)
        assert torch.equal(model.forward_head(features), model(x))


def test_reset_classifier() -> None:
    model = metablocks.create_model("caformer_s18")
    model.reset_classifier(10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10) and model.recipe.num_classes == 10
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_intermediates_and_feature_info() -> None:
    model = metablocks.create_model("convformer_s18")
    x = torch.randn(1, 3, 224, 224)
    final, feats = model.forward_intermediates(x)  # timm's return: (final features, intermediates)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 56, 56), (128, 28, 28), (320, 14, 14), (512, 7, 7)]
    assert torch.equal(final, model.forward_features(x)) and torch.equal(final, feats[-1])
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    assert [i["num_chs"] for i in model.feature_info] == [64, 128, 320, 512]
    assert len(model.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[1], intermediates_only=True)) == 1


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    model = metablocks.create_model("caformer_s18", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, model.parameters()))


def test_set_token_mixer_keeps_the_other_weights() -> None:
    model = metablocks.create_model("poolformer_s12", num_classes=10)
    mlp_before = model.stages[2].blocks[1].channel_mixer.fc1.weight.clone()
    untouched = model.stages[2].blocks[0]
    model.set_token_mixer({"type": "attention", "head_dim": 32}, stages=[2], blocks=[1, 3])
    swapped = model.stages[2].blocks[1]
    assert type(swapped.token_mixer).__name__ == "Attention" and model.stages[2].blocks[0] is untouched
    # the MLP weights moved from a 1x1 conv (NCHW stream) to a linear layer (NHWC stream), values kept
    assert torch.equal(swapped.channel_mixer.fc1.weight, mlp_before.reshape(swapped.channel_mixer.fc1.weight.shape))
    assert [m.name for m in model.recipe.stages[2].token_mixer] == ["pooling", "attention"] * 2 + ["pooling"] * 2
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    rebuilt = metablocks.build_model(model.recipe)  # the updated recipe describes the swapped model
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
