"""``metablocks export RECIPE -o model.onnx``: ONNX export (optionally deployed), checked in onnxruntime."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a recipe to ONNX and check it in onnxruntime",
                                   description="Build a recipe (optionally load weights, deploy-fold it), export it to "
                                               "ONNX with a dynamic batch dimension, run the file in onnxruntime and "
                                               "print the largest difference from PyTorch. Needs onnx, onnxruntime, "
                                               "onnxscript (the dev extra).")
    parser.add_argument("recipe", metavar="FILE|NAME", help="a recipe file or a shipped recipe name")
    parser.add_argument("-o", "--output", type=Path, default=None, help="the .onnx file (default: NAME.onnx)")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="dotted recipe override, e.g. --set num_classes=10 (repeatable)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a state_dict to load first (.safetensors or a torch checkpoint)")
    parser.add_argument("--deploy", action="store_true", help="fold BatchNorms, branches and layer scales first")
    parser.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                        help="torch.onnx exporter (auto: dynamo, falling back to the TorchScript tracer)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted difference from PyTorch")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime check")
    parser.set_defaults(func=run)


def _load_weights(model, path: Path) -> None:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
    model.load_state_dict(state)


def run(args: argparse.Namespace) -> int:
    import metablocks
    from metablocks.interop.onnx import export_onnx

    fields = {"img_size": args.img_size} if args.img_size else {}
    model = metablocks.build_model(args.recipe, overrides=args.overrides or None, **fields).eval()
    if args.weights:
        _load_weights(model, args.weights)
    if args.deploy:
        metablocks.deploy(model)
    output = args.output or Path(f"{model.recipe.name}{'_deploy' if args.deploy else ''}.onnx")
    try:
        result = export_onnx(model, output, exporter=args.exporter, opset=args.opset, check=args.check, atol=args.atol)
    except AssertionError as err:
        print(f"error: {err}")
        return 1
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({size_mb:.1f} MB, {result.exporter} exporter, input {'x'.join(map(str, result.input_shape))}, "
          f"dynamic batch)")
    if result.fallback_reason:
        print(f"note: the dynamo exporter failed ({result.fallback_reason}); used the TorchScript tracer")
    if result.max_abs_diff is not None:
        print(f"onnxruntime vs PyTorch: max abs difference {result.max_abs_diff:.2e} (atol {args.atol:.0e})")
    return 0
