"""Parameter and MAC counts: hand-computed counts of tiny modules, and the MetaFormer papers' numbers."""
import logging
import math
import warnings

import pytest
import torch
from torch import nn

import metablocks
from metablocks.analysis import count_macs, count_params, einsum_macs, human, params_by_stage


class Einsum(nn.Module):
    def __init__(self, equation: str, *shapes: tuple[int, ...]) -> None:
        super().__init__()
        self.equation = equation
        self.others = nn.ParameterList([nn.Parameter(torch.randn(s)) for s in shapes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, x, *self.others)


class MatMul(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_attention_block_by_hand() -> None:
    """One MetaFormer block with 2-head attention on a 2x3 map of 8 channels (N = 6 tokens)."""
    block = metablocks.MetaFormerBlock(8, token_mixer={"type": "attention", "head_dim": 4}, norm="layernorm",
                                       channel_mixer={"type": "mlp", "ratio": 2})
    n, dim, heads, d, hidden = 6, 8, 2, 4, 16
    qkv = n * dim * 3 * heads * d  # 1152
    sdpa = heads * n * n * (d + d)  # QK^T and AV: 576
    proj = n * heads * d * dim  # 384
    mlp = n * dim * hidden + n * hidden * dim  # 768 + 768
    norms = 2 * 5 * n * dim  # fvcore: 5 per element for an affine norm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = count_macs(block, (8, 2, 3))
    assert report.total == qkv + sdpa + proj + mlp + norms == 4128
    assert report.by_operator["scaled_dot_product_attention"] == sdpa
    assert report.by_stage == {"norm1": 5 * n * dim, "token_mixer": qkv + sdpa + proj, "norm2": 5 * n * dim, "channel_mixer": mlp}
    assert "aten::gelu" in report.skipped_ops and "aten::add" in report.skipped_ops
    assert "aten::scaled_dot_product_attention" not in report.skipped_ops
    assert not [w for w in caught if "fvcore" in str(w.filename) or "jit" in str(w.message)]


def test_no_fvcore_log_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        count_macs(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()), (3, 5, 5))
    assert not [r for r in caplog.records if r.name.startswith("fvcore")]


def test_sdpa_with_different_value_width_and_key_length() -> None:
    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            k = q.new_zeros(2, 3, 7, 4)  # Nk = 7 keys of width 4
            v = q.new_zeros(2, 3, 7, 6)  # values of width 6
            return nn.functional.scaled_dot_product_attention(q, k, v)

    # batch 2 (q's batch 1 broadcast with k, v), heads=3, Nq=5, Nk=7: QK^T 2*3*5*7*4 and AV 2*3*5*7*6
    assert count_macs(Sdpa(), (3, 5, 4)).total == 2 * 3 * 5 * 7 * (4 + 6)


@pytest.mark.parametrize("equation, shapes, expected", [
    ("bhnd,bhmd->bhnm", [(2, 3, 5, 4), (2, 3, 7, 4)], 2 * 3 * 5 * 7 * 4),
    ("i,j->ij", [(3,), (4,)], 12),  # an outer product: 12 multiplies (fvcore's path count halves it)
    ("...nd,...md->...nm", [(2, 3, 5, 4), (3, 7, 4)], 2 * 3 * 5 * 7 * 4),  # broadcast batch
    ("ij,jk", [(2, 3), (3, 4)], 24),  # implicit output
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], 2 * 3 * 4 + 2 * 4 * 5),  # (ij,jk)->ik first: 24 + 40
    ("ii->i", [(5, 5)], 0),  # one operand: no multiplies
    ("bcn,nm->bcm", [(1, 64, 49), (49, 49)], 64 * 49 * 49),  # random/token mixing over N tokens
])
def test_einsum_macs(equation: str, shapes: list, expected: int) -> None:
    assert einsum_macs(equation, shapes) == expected


def test_einsum_and_broadcast_matmul_through_tracing() -> None:
    # (1, 4, 6) mixed over its 6 tokens by a (6, 6) matrix: 4 * 6 * 6
    assert count_macs(Einsum("bcn,nm->bcm", (6, 6)), (4, 6)).total == 144
    # (1, 5, 4) @ (2, 4, 3): the right side carries the batch (fvcore's own matmul handle asserts here)
    assert count_macs(MatMul((2, 4, 3)), (5, 4)).total == 2 * 5 * 3 * 4
    # a vector on the right: (1, 5, 4) @ (4,) -> (1, 5)
    assert count_macs(MatMul((4,)), (5, 4)).total == 5 * 4


def test_params_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2, bias=False)))
    assert count_params(model) == (3 * 4 * 9 + 4) + (4 * 2 + 2) + 4
    assert params_by_stage(model) == {"0": 112, "1.0": 10, "1.1": 4}


def test_human() -> None:
    assert (human(11_915_176), human(1_822_555_648), human(9472), human(512)) == ("11.9M", "1.8G", "9.5K", "512")


def _sdpa_macs(model: metablocks.MetaModel) -> int:
    """B * heads * N * N * (d + d) for every attention block, from the recipe and the stage resolutions."""
    total = 0
    for stage, module in zip(model.recipe.stages, model.stages):
        n = module.resolution[0] * module.resolution[1]
        for j in range(stage.depth):
            mixer = stage.token_mixer[j % len(stage.token_mixer)]
            if mixer.name == "attention":
                heads, d = mixer.heads(stage.dim)
                total += heads * n * n * 2 * d
    return total


def test_caformer_s18_macs_match_the_paper() -> None:
    from fvcore.nn import FlopCountAnalysis

    model = metablocks.create_model("caformer_s18").eval()
    report = count_macs(model)
    plain = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    sdpa = 9 * 10 * 196 * 196 * 64 + 3 * 16 * 49 * 49 * 64  # stage 3: 9 blocks, 10 heads, 14x14; stage 4: 3, 16, 7x7
    assert _sdpa_macs(model) == sdpa == 228_652_032
    assert report.total == plain.total() + sdpa  # fvcore alone skips attention: 3.9G
    assert round(plain.total() / 1e9, 1) == 3.9
    assert round(report.gmacs, 1) == 4.1 == model.recipe.paper.macs_g
    assert sum(report.by_stage.values()) == report.total
    assert report.by_stage["stages.2"] - plain.by_module()["stages.2"] == 9 * 10 * 196 * 196 * 64
    assert report.by_stage["stages.0"] == plain.by_module()["stages.0"]  # convolutions only: fvcore counts them all


def test_poolformer_s12_macs_and_params() -> None:
    model = metablocks.create_model("poolformer_s12")
    report = count_macs(model)
    assert report.by_stage["stem"] == 56 * 56 * 64 * 3 * 7 * 7  # 7x7 stride-4 conv (fvcore ignores the bias)
    assert report.by_stage["head"] == 512 * 1000 + 5 * 512  # the classifier and the affine LayerNorm of the pooled vector
    assert sum(report.by_stage.values()) == report.total == 1_822_555_648
    assert round(report.gmacs, 1) == 1.8 == model.recipe.paper.macs_g
    assert count_params(model) == 11_915_176
    assert params_by_stage(model)["stem"] == 64 * 3 * 49 + 64
    assert report.skipped_ops["aten::avg_pool2d"] == 12  # the pooling mixers: not multiply-adds


def test_convformer_s18_macs() -> None:
    """3.96 GMACs; the MetaFormer-baselines paper truncates to one decimal (3.9), as it does for every size
    (convformer_s36 7.67 -> 7.6, caformer_m36 13.29 -> 13.2)."""
    model = metablocks.create_model("convformer_s18")
    report = count_macs(model)
    assert "scaled_dot_product_attention" not in report.by_operator
    assert math.floor(report.gmacs * 10) / 10 == 3.9 == model.recipe.paper.macs_g
    assert report.total == 3_959_248_640


def test_randformer_s12_random_mixing_matmul() -> None:
    """RandFormer mixes tokens with a frozen (N, N) matrix, ``(N, N) @ (B, N, C)``: N * N * C MACs per block."""
    model = metablocks.create_model("randformer_s12")
    report = count_macs(model)
    assert report.by_operator["matmul"] == 6 * 196 * 196 * 320 + 2 * 49 * 49 * 512  # stages 3 and 4: 6 and 2 blocks
    assert round(report.gmacs, 1) == 1.9 == model.recipe.paper.macs_g
