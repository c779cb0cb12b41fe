"""``metablocks zoo``: build every shipped recipe and hold its parameters and MACs against the paper (and timm).

One row per recipe: our parameters (M) and the paper's, our MACs (G, metablocks.analysis.count_macs at the paper's
resolution) and the paper's, and whether the parameter count equals timm's model (``timm_name``; built without
weights, no forward). A row is out of tolerance when

* params: |ours - paper| > half a unit of the paper's last printed digit (12 -> 0.5M, 25.6 -> 0.05M), and at least
  0.5% of the paper's value when the paper rounds to whole millions;
* MACs: |ours - paper| > 3% of the paper's value, or half a unit of its last printed digit when that is more;
* timm: the parameter count differs from timm's;
* the recipe does not build.

Ours are counted the way the paper's table counted (``paper.counts``: the whole model, trainable parameters only,
the deployed re-parameterized model, or the backbone without its classifier); the row's name says which when it is
not the whole model.

Such rows are marked ``OUT`` and the command exits with status 1 (unless ``--no-fail``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

MACS_TOLERANCE = 0.03  # relative
INTEGER_PARAMS_SLACK = 0.005  # relative, at least, when the paper prints whole millions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("zoo", help="every shipped recipe: params and MACs, ours vs the paper's (and timm)",
                                   description="Build every shipped recipe and print one table: our parameters and "
                                               "MACs against the paper's numbers and timm's parameter count; rows out "
                                               "of tolerance are marked OUT and make the exit status 1.")
    parser.add_argument("--filter", metavar="SUBSTRING", default=None, help="only recipes whose name contains SUBSTRING")
    parser.add_argument("--markdown", action="store_true", help="print a GitHub-flavoured markdown table")
    parser.add_argument("--no-timm", action="store_true", help="do not build timm models to compare parameter counts")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when rows are out of tolerance")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(func=run)


@dataclass
class Row:
    """One recipe's numbers; ``problems`` names what is out of tolerance."""

    name: str
    params: int | None = None
    macs: int | None = None
    resolution: int | str = 224  # the side, or "HxW" for a non-square input
    paper_params_m: float | None = None
    paper_macs_g: float | None = None
    timm: str = "-"
    counts: str = "all"
    note: str | None = None
    timm_params: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def half_unit(printed: float) -> float:
    """Half a unit of the last digit a paper printed (0.6 -> 0.05, 12 -> 0.5)."""
    exponent = Decimal(format(printed, "g")).as_tuple().exponent
    return 0.5 * 10.0 ** min(int(exponent), 0)


def params_tolerance(paper_m: float) -> float:
    """Half a unit of the last digit the paper printed (in millions); at least 0.5% when it printed whole millions."""
    if float(paper_m).is_integer():
        return max(half_unit(paper_m), INTEGER_PARAMS_SLACK * paper_m)
    return half_unit(paper_m)


def params_ok(ours: int, paper_m: float) -> bool:
    return abs(ours / 1e6 - paper_m) <= params_tolerance(paper_m) + 1e-9


def macs_ok(ours: int, paper_g: float) -> bool:
    """Within 3%, or within the paper's rounding when that is coarser (0.6 G printed for 0.643 G)."""
    return abs(ours / 1e9 - paper_g) <= max(MACS_TOLERANCE * paper_g, half_unit(paper_g)) + 1e-12


def timm_params(timm_name: str) -> int:
    """Parameters of timm's model (no weights; on the meta device when timm allows it, so nothing is initialized)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False)
    except Exception:  # a model whose init needs real tensors
        model = timm.create_model(timm_name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def measure(name: str, *, with_timm: bool) -> Row:
    """Build recipe ``name`` at its paper's resolution and fill a Row (problems included)."""
    from metablocks.analysis import count_macs, count_params
    from metablocks.model import MetaModel
    from metablocks.recipe import load_recipe

    row = Row(name)
    try:
        recipe = load_recipe(name)
        paper = recipe.paper
        row.paper_params_m, row.paper_macs_g, row.resolution = paper.params_m, paper.macs_g, (
            paper.resolution if isinstance(paper.resolution, int) else paper.size_text)
        if tuple(recipe.img_size) != paper.size:
            recipe = load_recipe(name, [f"img_size=[{paper.size[0]}, {paper.size[1]}]"])
        model = MetaModel(recipe).eval()
        row.counts, row.note = paper.counts, paper.note
        row.timm_params = count_params(model)  # timm holds the whole, trainable-form model
        counted = COUNTED[paper.counts](model)  # as the paper's table counted it (may fold the model in place)
        row.params = counted.params
        row.macs = count_macs(counted.model, (recipe.in_chans, *paper.size)).total
    except Exception as err:  # a recipe that does not build is a row out of tolerance, not a crash
        row.problems.append(f"build failed: {type(err).__name__}: {str(err).splitlines()[0]}")
        return row
    if row.paper_params_m is not None and not params_ok(row.params, row.paper_params_m):
        row.problems.append("params")
    if row.paper_macs_g is not None and not macs_ok(row.macs, row.paper_macs_g):
        row.problems.append("MACs")
    if recipe.timm_name:
        if not with_timm:
            row.timm = "not checked"
        else:
            try:
                theirs = timm_params(recipe.timm_name)
            except Exception as err:
                row.timm = f"timm failed: {type(err).__name__}"
                row.problems.append("timm")
            else:
                row.timm = "params = timm" if theirs == row.timm_params else f"params != timm ({theirs:,})"
                if theirs != row.timm_params:
                    row.problems.append("timm")
    return row


@dataclass
class Counted:
    model: Any
    params: int


def _trainable(model: Any) -> Counted:
    return Counted(model, sum(p.numel() for p in model.parameters() if p.requires_grad))


def _deployed(model: Any) -> Counted:
    from metablocks.analysis import count_params
    from metablocks.deploy import deploy

    deployed = deploy(model)
    return Counted(deployed, count_params(deployed))


def _backbone(model: Any) -> Counted:
    from metablocks.analysis import count_params

    return Counted(model, count_params(model) - count_params(model.get_classifier()))


def _all(model: Any) -> Counted:
    from metablocks.analysis import count_params

    return Counted(model, count_params(model))


COUNTED = {"all": _all, "trainable": _trainable, "deployed": _deployed, "backbone": _backbone}
"""How to count a model the way its paper's table did (Paper.counts)."""


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def cells(row: Row) -> list[str]:
    check = "ok" if row.ok else "OUT: " + ", ".join(row.problems)
    if row.note and not row.ok:
        check += f" ({row.note})"
    name = row.name if row.counts == "all" else f"{row.name} ({row.counts})"
    return [name, _num(row.params / 1e6 if row.params is not None else None, ".2f"), _num(row.paper_params_m, "g"),
            _num(row.macs / 1e9 if row.macs is not None else None, ".2f"), _num(row.paper_macs_g, "g"),
            str(row.resolution), row.timm, check]


HEADER = ["recipe", "params (ours, M)", "params (paper, M)", "MACs (ours, G)", "MACs (paper, G)", "res", "timm-equal?",
          "check"]


def render(rows: list[Row], markdown: bool) -> str:
    table = [HEADER] + [cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---", *["---:"] * 5, "---", "---"]) + "|"]
        for row, line in zip(rows, table[1:]):
            if not row.ok:
                line = [f"**{line[0]}**", *line[1:-1], f"**{line[-1]}**"]
            lines.append("| " + " | ".join(line) + " |")
        return "\n".join(lines)
    from metablocks.commands.info import table as text_table

    return text_table(table, right={1, 2, 3, 4, 5})


def run(args: argparse.Namespace) -> int:
    import metablocks

    names = [n for n in metablocks.list_recipes() if args.filter is None or args.filter in n]
    if not names:
        print(f"no shipped recipe matches {args.filter!r}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        with contextlib.redirect_stderr(io.StringIO()):  # timm/fvcore chatter
            rows.append(measure(name, with_timm=not args.no_timm))
    bad = [r for r in rows if not r.ok]
    if args.json:
        import dataclasses
        import json

        print(json.dumps([{**dataclasses.asdict(r), "ok": r.ok} for r in rows], indent=1))
        return 1 if bad and not args.no_fail else 0
    print(render(rows, args.markdown))
    print(f"\n{len(rows)} recipes, {len(bad)} out of tolerance (params: the paper's rounding; MACs: "
          f"{MACS_TOLERANCE:.0%}; timm: equal parameter count)" + (": " + ", ".join(r.name for r in bad) if bad else ""))
    return 1 if bad and not args.no_fail else 0

