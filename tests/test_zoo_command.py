"""``metablocks zoo``: the printed numbers for known recipes, the tolerance rules, an out-of-tolerance row marked and
the exit status, markdown output; the whole zoo (slow)."""
import pytest

import metablocks
from metablocks.cli import main
from metablocks.commands.zoo import macs_ok, params_ok, params_tolerance


def row_of(text: str, name: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.split() and line.split()[0] == name]
    assert len(lines) == 1, text
    return lines[0].split()


def test_poolformer_s12(capsys) -> None:
    assert main(["zoo", "--filter", "poolformer_s12"]) == 0
    out = capsys.readouterr().out
    assert row_of(out, "poolformer_s12") == ["poolformer_s12", "11.92", "12", "1.82", "1.8", "224", "params", "=", "timm",
                                             "ok"]
    assert "poolformerv2_s12" not in out  # --filter is a substring match: poolformer_s12 only
    assert "1 recipes, 0 out of tolerance" in out


def test_caformer_s18_markdown(capsys) -> None:
    assert main(["zoo", "--filter", "caformer_s18", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| recipe | params (ours, M) | params (paper, M) | MACs (ours, G) | MACs (paper, G) |")
    assert lines[1].startswith("|---|---:|")
    assert lines[2] == "| caformer_s18 | 26.34 | 26 | 4.13 | 4.1 | 224 | params = timm | ok |"


def test_no_timm_and_no_timm_name(capsys) -> None:
    assert main(["zoo", "--filter", "raftmlp_s", "--no-timm"]) == 0
    assert row_of(capsys.readouterr().out, "raftmlp_s")[1:] == ["9.87", "9.9", "2.10", "2.1", "224", "-", "ok"]
    assert main(["zoo", "--filter", "poolformer_s12", "--no-timm"]) == 0  # has a timm_name, not built
    assert row_of(capsys.readouterr().out, "poolformer_s12")[6:] == ["not", "checked", "ok"]


def test_out_of_tolerance_row_is_marked(tmp_path, monkeypatch, capsys) -> None:
    """A recipe whose paper numbers disagree with the model: marked OUT, exit status 1 unless --no-fail."""
    bad = tmp_path / "bad_s12.yaml"
    bad.write_text("extends: poolformer_s12\nname: bad_s12\npaper: {params_m: 13, macs_g: 1.9}\n")
    good = tmp_path / "good_s12.yaml"
    good.write_text("extends: poolformer_s12\nname: good_s12\npaper: {params_m: 11.9, macs_g: 1.85}\n")
    monkeypatch.setattr(metablocks, "list_recipes", lambda: [str(bad), str(good)])
    assert main(["zoo", "--no-timm"]) == 1
    out = capsys.readouterr().out
    bad_line = next(line for line in out.splitlines() if "bad_s12" in line)
    good_line = next(line for line in out.splitlines() if "good_s12" in line)
    assert bad_line.rstrip().endswith("OUT: params, MACs")  # 11.92 vs 13 (> 0.5); 1.82 vs 1.9 (4.1% > 3%)
    assert good_line.rstrip().endswith("ok")  # 11.92 vs 11.9 (<= 0.05); 1.82 vs 1.85 (1.5%)
    assert "2 recipes, 1 out of tolerance" in out
    assert main(["zoo", "--no-timm", "--no-fail", "--filter", "bad"]) == 0
    assert main(["zoo", "--no-timm", "--markdown", "--filter", "bad"]) == 1
    assert "**OUT: params, MACs** |" in capsys.readouterr().out


def test_unknown_filter_and_broken_recipe(tmp_path, monkeypatch, capsys) -> None:
    assert main(["zoo", "--filter", "no_such_recipe_xyz"]) == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("extends: poolformer_s12\nname: broken\nstages: [{depth: 1, dim: 64, token_mixer: nope}]\n")
    monkeypatch.setattr(metablocks, "list_recipes", lambda: [str(broken)])
    assert main(["zoo", "--no-timm"]) == 1
    assert "OUT: build failed: RecipeError" in capsys.readouterr().out


def test_tolerance_rules() -> None:
    assert params_tolerance(25.6) == pytest.approx(0.05)  # half a unit of the last printed digit
    assert params_tolerance(9.9) == pytest.approx(0.05)
    assert params_tolerance(12) == pytest.approx(0.5)
    assert params_tolerance(197) == pytest.approx(0.985)  # whole millions: at least 0.5%
    assert params_ok(25_557_032, 25.6) and not params_ok(25_657_032, 25.6)
    assert params_ok(11_915_176, 12) and not params_ok(12_600_000, 12)
    assert macs_ok(1_822_000_000, 1.8) and not macs_ok(1_860_000_000, 1.8)


@pytest.mark.slow
def test_whole_zoo(capsys) -> None:
    """Every shipped recipe builds and gets a row; every recipe that names a timm model has timm's parameter count.

    Rows outside the papers' rounding are reported (and make the status 1) but do not fail this test: some papers
    truncate rather than round (MLP-Mixer's 59M for 59.88M), which is for each family's recipe to note.
    """
    status = main(["zoo"])
    out = capsys.readouterr().out
    assert status in (0, 1)
    for name in metablocks.list_recipes():
        row = row_of(out, name)
        assert "failed:" not in " ".join(row), row
        if metablocks.load_recipe(name).timm_name:
            assert " ".join(row[6:9]) == "params = timm", row


def test_rows_count_what_the_paper_counted() -> None:
    """Paper.counts: RandFormer lists trainable params, UniRepLKNet the deployed model, MLP-Mixer the backbone."""
    from metablocks.commands.zoo import measure

    rand = measure("randformer_s12", with_timm=False)
    assert (rand.counts, rand.params, rand.timm_params, rand.ok) == ("trainable", 11_891_712, 11_891_712 + 235_298, True)
    uni = measure("unireplknet_a", with_timm=False)
    assert uni.counts == "deployed" and uni.params < uni.timm_params == 4_649_060 and round(uni.params / 1e6, 1) == 4.4
    assert uni.ok  # 0.643 GMACs against the paper's printed 0.6
    mixer = measure("mixer_s16_224", with_timm=False)
    assert (mixer.counts, mixer.params, mixer.ok) == ("backbone", 18_528_264 - (512 * 1000 + 1000), True)
    cswin = measure("cswin_t", with_timm=False)
    assert cswin.problems == ["params"] and cswin.note == "the official code's structure has 22.3M"
