"""``metablocks zoo``: build every shipped recipe and hold its parameters and MACs against the paper (and timm).

One row per recipe: our parameters (M) and the paper's, our MACs (G, metablocks.analysis.count_macs at the paper's
resolution) and the paper's, and whether the parameter count equals timm's model (``timm_name``; built without
weights, no forward). A row is out of tolerance when

* params: |ours - paper| > half a unit of the paper's last printed digit (12 -> 0.5M, 25.6 -> 0.05M), and at least
  0.5% of the paper's value when the paper rounds to whole millions;
* MACs: |ours - paper| > 3% of the paper's value;
* timm: the parameter count differs from timm's;
* the recipe does not build.

Such rows are marked ``OUT`` and the command exits with status 1 (unless ``--no-fail``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import dataclass, field
from decimal import Decimal

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
    parser.set_defaults(func=run)


@dataclass
class Row:
    """One recipe's numbers; ``problems`` names what is out of tolerance."""

    name: str
    params: int | None = None
    macs: int | None = None
    resolution: int = 224
    paper_params_m: float | None = None
    paper_macs_g: float | None = None
    timm: str = "-"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def params_tolerance(paper_m: float) -> float:
    """Half a unit of the last digit the paper printed (in millions); at least 0.5% when it printed whole millions."""
    exponent = Decimal(format(paper_m, "g")).as_tuple().exponent
    half_unit = 0.5 * 10.0 ** min(int(exponent), 0)
    if int(exponent) >= 0:
        half_unit = max(half_unit, INTEGER_PARAMS_SLACK * paper_m)
    return half_unit


def params_ok(ours: int, paper_m: float) -> bool:
    return abs(ours / 1e6 - paper_m) <= params_tolerance(paper_m) + 1e-9


def macs_ok(ours: int, paper_g: float) -> bool:
    return abs(ours / 1e9 - paper_g) <= MACS_TOLERANCE * paper_g + 1e-12


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
        row.paper_params_m, row.paper_macs_g, row.resolution = paper.params_m, paper.macs_g, paper.resolution
        if tuple(recipe.img_size) != (paper.resolution, paper.resolution):
            recipe = load_recipe(name, [f"img_size={paper.resolution}"])
        model = MetaModel(recipe)
        row.params = count_params(model)
        row.macs = count_macs(model, (recipe.in_chans, paper.resolution, paper.resolution)).total
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
                row.timm = "params = timm" if theirs == row.params else f"params != timm ({theirs:,})"
                if theirs != row.params:
                    row.problems.append("timm")
    return row


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def cells(row: Row) -> list[str]:
    check = "ok" if row.ok else "OUT: " + ", ".join(row.problems)
    return [row.name, _num(row.params / 1e6 if row.params is not None else None, ".2f"), _num(row.paper_params_m, "g"),
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
    print(render(rows, args.markdown))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} recipes, {len(bad)} out of tolerance (params: the paper's rounding; MACs: "
          f"{MACS_TOLERANCE:.0%}; timm: equal parameter count)" + (": " + ", ".join(r.name for r in bad) if bad else ""))
    return 1 if bad and not args.no_fail else 0

