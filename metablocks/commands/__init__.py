"""CLI subcommands: one module each, defining ``register(subparsers)`` that adds its parser and sets
``func`` (taking the parsed args, returning an exit code). cli.py finds them all; adding a command is adding a file."""
