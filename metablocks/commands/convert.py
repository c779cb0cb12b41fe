"""``metablocks convert SRC --recipe NAME -o model.safetensors``: an official checkpoint (the paper's own code base's
state_dict layout) mapped onto the recipe model strictly and saved as a checksummed safetensors file."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="map an official (non-timm) checkpoint onto a recipe model",
                                   description="Read an official checkpoint (.pth/.pt/.bin/.safetensors in the "
                                               "official code's key layout; MOAT: a .npz of TF variables), convert its "
                                               "keys and tensors to the recipe model's (the family's converter in "
                                               "metablocks/interop/official), load them strictly and write a "
                                               "safetensors file. Every key must be placed: the ones that cannot be, "
                                               "or that the model misses, are listed. Keys a family leaves out on "
                                               "purpose (a training-only auxiliary head) are reported. timm "
                                               "checkpoints need no conversion: create_model(..., checkpoint_path=).")
    parser.add_argument("source", type=Path, nargs="?", metavar="SRC", help="the official checkpoint file")
    parser.add_argument("--recipe", metavar="FILE|NAME", help="a recipe file or a shipped recipe name")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="the .safetensors file to write (default: NAME.safetensors)")
    parser.add_argument("--family", default=None,
                        help="the official code base (a recipes/ folder, e.g. biformer); default: the recipe's")
    parser.add_argument("--key", default=None, metavar="NAME",
                        help="the checkpoint entry holding the state_dict (default: state_dict_ema, state_dict, model "
                             "or the file itself)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="dotted recipe override, e.g. --set num_classes=21843 (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the families with an official converter, and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import metablocks
    from metablocks.interop.official import OfficialWeightsError, convert_official, families, read_official
    from metablocks.train.checkpoint import save_model

    if args.list:
        for name, entry in families().items():
            print(f"{name:14s} {entry.source}")
        return 0
    if args.source is None or args.recipe is None:
        print("error: convert needs the official checkpoint SRC and --recipe (or --list)")
        return 2
    model = metablocks.build_model(args.recipe, overrides=args.overrides or None)
    family = args.family
    try:
        if family is None:
            from metablocks.interop.official import family_of

            family = family_of(args.recipe) or family_of(model.recipe.name)
        if family is None:
            raise OfficialWeightsError(f"cannot tell which family {args.recipe!r} belongs to; name it with --family")
        state = read_official(args.source, family, key=args.key)
        convert_official(state, model, family=family)
    except OfficialWeightsError as err:
        print(f"error: {args.source}: {err}")
        return 1
    output = args.output or Path(f"{model.recipe.name}.safetensors")
    save_model(output, model)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {output}: {model.recipe.name} ({n:,} parameters), {len(model.state_dict())} tensors from the "
          f"official {family} checkpoint {args.source}")
    if model.official_dropped:
        count = sum(int(state[k].numel()) if hasattr(state[k], "numel") else int(getattr(state[k], "size", 0))
                    for k in model.official_dropped)
        print(f"left out on purpose ({len(model.official_dropped)} keys, {count:,} values): "
              f"{', '.join(model.official_dropped[:8])}{' ...' if len(model.official_dropped) > 8 else ''}")
    return 0
