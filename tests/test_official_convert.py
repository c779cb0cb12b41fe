"""Official checkpoints in: the converter registry (``metablocks.interop.official``), ``convert_official`` and the
``metablocks convert`` command, on the committed manifests of official state_dicts (key names and shapes taken once
from each official code base; tests/data/<family>_official_keys.json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metablocks
from metablocks.cli import main
from metablocks.interop import official as registry
from metablocks.interop.official import OfficialWeightsError, convert_official, families, family_of
from metablocks.train.checkpoint import load_model_weights

DATA = Path(__file__).parent / "data"


def manifest_state(entries, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of a manifest's shapes ({key: shape} or [[key, shape], ...]); integer-valued, so exact."""
    pairs = entries.items() if isinstance(entries, dict) else entries
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randint(-8, 8, tuple(shape), generator=gen).float() for k, shape in pairs}


def biformer_tiny_official() -> dict[str, torch.Tensor]:
    return manifest_state(json.loads((DATA / "biformer_official_keys.json").read_text())["models"]["biformer_tiny"]["keys"])


def test_every_non_timm_family_of_the_zoo_has_a_converter() -> None:
    assert {"biformer", "ffnet", "lsnet", "moat", "ninformer", "partialnet"} <= set(families())
    assert all(entry.source for entry in families().values())


def test_family_of_a_recipe() -> None:
    assert family_of("biformer_tiny") == "biformer"
    assert family_of("lsnet_t") == "lsnet"
    assert family_of("not_a_recipe") is None


def test_family_of_a_user_file_that_extends_a_shipped_recipe(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("extends: biformer_tiny\nname: mine\nnum_classes: 10\n")
    assert family_of(user) == "biformer"
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text("extends: mine.yaml\nname: deeper\n")
    assert family_of(deeper) == "biformer"


def test_convert_official_places_every_key_and_value() -> None:
    official = biformer_tiny_official()
    model = convert_official(official, "biformer_tiny")
    ours = model.state_dict()
    assert torch.equal(ours["stem.layers.0.conv.weight"], official["downsample_layers.0.0.weight"])
    assert torch.equal(ours["stages.3.blocks.1.token_mixer.qkv.weight"], official["stages.3.1.attn.qkv.weight"])
    assert torch.equal(ours["head.fc.weight"], official["head.weight"])
    assert not model.training and model.official_dropped == []


def test_ffnet_lsnet_partialnet_manifests_load_through_the_registry() -> None:
    ffnet = json.loads((DATA / "ffnet_official_keys.json").read_text())["keys"]["ffnet_1"]
    convert_official(manifest_state(ffnet), "ffnet_1")
    lsnet = json.loads((DATA / "lsnet_official_keys.json").read_text())["keys"]["lsnet_t"]
    convert_official(manifest_state(lsnet), "lsnet_t")
    partial = json.loads((DATA / "partialnet_official_keys.json").read_text())["state_dict"]["t0"]
    convert_official(manifest_state(partial), "partialnet_t0")


def test_a_checkpoint_that_does_not_fit_names_the_keys() -> None:
    official = biformer_tiny_official()
    official["aux_head.weight"] = torch.zeros(3)
    del official["stages.3.1.mlp.0.weight"]
    official["head.bias"] = torch.zeros(7)
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(official, "biformer_tiny")
    text = str(err.value)
    assert "could not place 1 key(s) (after conversion): aux_head.weight" in text
    assert "the model's 1 key(s) not in the official biformer weights: stages.3.blocks.1.channel_mixer.fc1.weight" in text
    assert "shape mismatch: head.fc.bias ours (1000,) vs official (7,)" in text


def test_no_converter_for_a_timm_family() -> None:
    with pytest.raises(OfficialWeightsError, match=r"no official converter for the 'resnet' family; the families with "
                                                   r"one are: biformer, .*timm families load with"):
        convert_official({}, "resnet50")


def test_drops_are_left_out_and_reported(monkeypatch) -> None:
    """A family's ``drops`` (a training-only head) are taken out before conversion and listed; nothing else is."""
    calls = []

    def convert(state, model=None):
        calls.append(sorted(state))
        return registry.families()["biformer"].convert(state, model)

    monkeypatch.setitem(registry._FAMILIES, "biformer_aux", registry.Official("biformer_aux", convert, "test",
                                                                              (r"^dsn\.",)))
    monkeypatch.setattr(registry, "families", lambda: dict(registry._FAMILIES))
    official = biformer_tiny_official()
    official.update({"dsn.0.weight": torch.zeros(4, 4), "dsn.1.bias": torch.zeros(4)})
    model = convert_official(official, "biformer_tiny", family="biformer_aux")
    assert model.official_dropped == ["dsn.0.weight", "dsn.1.bias"]
    assert not any(k.startswith("dsn.") for k in calls[0])


def test_missing_batchnorm_counters_are_not_an_error() -> None:
    """Older checkpoints have no ``num_batches_tracked``; it is a counter, not a weight, so the model keeps its own."""
    official = {k: v for k, v in biformer_tiny_official().items() if not k.endswith("num_batches_tracked")}
    convert_official(official, "biformer_tiny")


def test_cli_writes_a_loadable_safetensors(tmp_path: Path, capsys) -> None:
    official = biformer_tiny_official()
    src = tmp_path / "biformer_tiny_in1k.pth"
    torch.save({"model": official, "epoch": 300}, src)
    out = tmp_path / "ours.safetensors"
    assert main(["convert", str(src), "--recipe", "biformer_tiny", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: biformer_tiny (13,142,760 parameters)" in printed
    weights = load_model_weights(out)
    assert torch.equal(weights["stages.0.blocks.0.cpe.conv.weight"], official["stages.0.0.pos_embed.weight"])
    model = metablocks.create_model("biformer_tiny")
    model.load_state_dict(weights, strict=True)


def test_cli_reports_what_it_could_not_place(tmp_path: Path, capsys) -> None:
    official = biformer_tiny_official()
    official["extra.weight"] = torch.zeros(1)
    src = tmp_path / "bad.pth"
    torch.save(official, src)
    assert main(["convert", str(src), "--recipe", "biformer_tiny", "-o", str(tmp_path / "x.safetensors")]) == 1
    printed = capsys.readouterr().out
    assert f"error: {src}: the official biformer weights does not fit this biformer model" in printed
    assert "could not place 1 key(s) (after conversion): extra.weight" in printed
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_key_picks_the_nested_state_dict(tmp_path: Path, capsys) -> None:
    src = tmp_path / "ema.pth"
    torch.save({"model": {}, "model_ema": biformer_tiny_official()}, src)
    assert main(["convert", str(src), "--recipe", "biformer_tiny", "--key", "model_ema",
                 "-o", str(tmp_path / "a.safetensors")]) == 0
    assert main(["convert", str(src), "--recipe", "biformer_tiny", "--key", "ema"]) == 1
    assert "has no state_dict under 'ema' (dicts in the file: model, model_ema)" in capsys.readouterr().out


def test_cli_list_and_usage(capsys) -> None:
    assert main(["convert", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "biformer       rayleizhu/BiFormer models/biformer.py" in listed
    assert "moat           google-research/deeplab2" in listed
    assert main(["convert", "x.pth"]) == 2
    assert "convert needs the official checkpoint SRC and --recipe" in capsys.readouterr().out


def test_cli_moat_reads_tf_variables_from_npz(tmp_path: Path, capsys) -> None:
    """MOAT's official weights are TensorFlow variables; a .npz of them converts like any checkpoint, the EMA copies
    taking the raw weights' place, and the optimizer's slots left out on purpose."""
    from test_zoo_moat import MICRO

    data = np.load(DATA / "moat_official_micro.npz")
    variables = {k.removeprefix("tf:"): data[k].astype(np.float32) for k in data.files if k.startswith("tf:")}
    fc = "moat/logits_head/kernel"
    variables[f"{fc}/ExponentialMovingAverage"] = variables[fc] * 2
    variables["global_step"] = np.array(7)
    src = tmp_path / "moat_micro.npz"
    np.savez(src, **variables)
    out = tmp_path / "moat.safetensors"
    args = ["convert", str(src), "--recipe", "tiny_moat_0", "-o", str(out)] + [a for m in MICRO for a in ("--set", m)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "left out on purpose (1 keys, 1 values): global_step" in printed
    weights = load_model_weights(out)
    assert np.array_equal(weights["head.fc.weight"].numpy(), (variables[fc] * 2)[0, 0].T)
