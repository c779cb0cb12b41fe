"""``metablocks schema [-o FILE]``: the JSON Schema of recipe files, for editors (completion, hover docs, checking)."""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"  # what editors' YAML language servers fully support


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schema", help="JSON Schema of recipe files (for editors)",
                                   description="Print the JSON Schema of recipe YAML files: every registered component "
                                               "(user ones included) is a choice discriminated by 'type'. The default "
                                               "schema is for the files people write (extends, block, stage_defaults, "
                                               "downsample, partial stages); --resolved gives the strict schema of the "
                                               "canonical form printed by 'metablocks info --resolved'. "
                                               "See docs/yaml-editor.md.")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the schema to FILE instead of stdout")
    parser.add_argument("--resolved", action="store_true", help="the strict schema of resolved recipes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    schema = resolved_schema() if args.resolved else editor_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def resolved_schema() -> dict[str, Any]:
    """The schema of the canonical resolved form: ``Recipe.model_json_schema()`` (components from the registry)."""
    from metablocks.recipe.schema import Recipe
    from metablocks.registry import load_plugins

    load_plugins()
    return {"$schema": SCHEMA_DIALECT, **_draft7(Recipe.model_json_schema())}


def _draft7(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's draft 2020-12 output in draft-07 terms: ``definitions`` for ``$defs``, tuples as ``items: [...]``."""
    schema = json.loads(json.dumps(schema).replace('"#/$defs/', '"#/definitions/'))
    schema["definitions"] = schema.pop("$defs", {})

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "prefixItems" in node:
                rest = node.pop("items", None)
                node["items"] = node.pop("prefixItems")
                if rest is not None:
                    node["additionalItems"] = rest
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def editor_schema() -> dict[str, Any]:
    """The schema of recipe files as people write them, which the loader folds into the resolved form.

    On top of the resolved schema it accepts the sugar keys ``extends``, ``block``, ``blocks``, ``stage_defaults`` and
    ``downsample``; no field is required (a base recipe has no stages, ``name`` defaults to the file name, and
    ``block``/``stage_defaults``/``extends`` may supply any stage field); a component mapping without ``type:``
    is accepted (it is merged into the component it inherits); ``img_size`` may be one number. Every key is still
    checked against the fields that exist, and every component with ``type:`` against its own config.
    """
    from metablocks.blocks import BLOCK_SHAPES

    schema = copy.deepcopy(resolved_schema())
    defs = schema["definitions"]
    _accept_partial_components(schema)
    stage = defs["StageConfig"]
    stage.pop("required", None)
    stage["description"] = ("A stage: an optional downsample, then `depth` blocks of width `dim`. Any field may come from "
                            "`block:`, `stage_defaults:` or the recipe this one `extends`.")
    stage["properties"]["shape"]["enum"] = list(BLOCK_SHAPES)
    props = schema["properties"]
    props["img_size"] = {"anyOf": [{"type": "integer", "minimum": 1},
                                   {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}],
                         "default": props["img_size"].get("default"), "title": "Img Size",
                         "description": "input (height, width), or one number for a square input"}
    stage_ref = {"$ref": "#/definitions/StageConfig"}
    props["stages"] = {"anyOf": [props["stages"], {
        "type": "object", "additionalProperties": stage_ref,
        "description": "edits of the inherited stages by index (`{2: {depth: 20}}`; negative from the end)"}]}
    schema["properties"] = {
        "extends": {"type": "string", "title": "Extends",
                    "description": "the recipe this one starts from (a file next to this one, or a shipped recipe's file "
                                   "name); the keys written here are merged over it"},
        **props,
        "block": {**stage_ref, "description": "defaults for the blocks of every stage (any stage field)"},
        "blocks": {**copy.deepcopy(stage["properties"]["blocks"]),
                   "description": "named block templates for every stage with a `pattern:` (merged under a stage's own)"},
        "stage_defaults": {"type": "array", "items": stage_ref, "title": "Stage Defaults",
                           "description": "per-stage defaults, one entry per stage, merged over `block`"},
        "downsample": {**copy.deepcopy(stage["properties"]["downsample"]),
                       "description": "the downsample at the start of every stage but the first"},
    }
    schema.pop("required", None)
    schema["title"] = "metablocks recipe"
    schema["description"] = ("A metablocks recipe file: stem -> stages -> head (generated by `metablocks schema` from the "
                             "registered components).")
    return schema


def _accept_partial_components(node: Any) -> None:
    """Next to every component union, allow a mapping without ``type:`` (merged into the inherited component)."""
    if isinstance(node, dict):
        alternatives = node.get("anyOf")
        if isinstance(alternatives, list) and any(isinstance(a, dict) and "discriminator" in a for a in alternatives):
            alternatives.append({"type": "object", "not": {"required": ["type"]},
                                 "description": "fields merged into the component inherited from `extends`, `block` or "
                                                "`stage_defaults` (no `type:`)"})
        for value in node.values():
            _accept_partial_components(value)
    elif isinstance(node, list):
        for value in node:
            _accept_partial_components(value)
