"""``metablocks`` command line: every module in metablocks/commands adds its own subcommand.

Options every command takes: ``--plugin FILE|MODULE`` (repeatable; also ``METABLOCKS_PLUGINS``) loads the user's own
components first. A user's mistake (a bad recipe or flag value, a missing file, a locked sweep, a closed pipe) ends
in one ``error:`` line and a non-zero exit status, never in a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from metablocks import commands
from metablocks.recipe.errors import RecipeError
from metablocks.registry import PLUGINS_ENV, RegistryError, load_plugin, load_plugins, plugin_list

PLUGIN_HELP = (f"a Python file (my_mixers.py) or an importable module (my_pkg.mixers) that registers components of "
               f"your own; repeatable; also {PLUGINS_ENV} (separated by '{os.pathsep}')")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; an option's default is shown once, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or any(default is nothing for nothing in (None, False, True, argparse.SUPPRESS))
                or default == [] or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _add_plugin_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument("--plugin", dest=dest, action="append", default=argparse.SUPPRESS, metavar="FILE|MODULE",
                        help=PLUGIN_HELP)


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _all_parsers(child)
    return found


def parser() -> argparse.ArgumentParser:
    from metablocks import __version__

    root = argparse.ArgumentParser(prog="metablocks", description="Composable MetaFormer blocks: recipes -> models.\n\n"
                                   "Every command takes --plugin FILE|MODULE (repeatable) to load components of your "
                                   f"own first; {PLUGINS_ENV} does the same for every process.")
    root.add_argument("--version", action="version", version=f"metablocks {__version__}")
    _add_plugin_option(root, "root_plugins")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    for child in _all_parsers(root):
        child.formatter_class = HelpFormatter
        if child is not root and not any(a.dest == "plugins" for a in child._actions):
            _add_plugin_option(child, "plugins")
    return root


def plugins_of(args: argparse.Namespace) -> list[str]:
    """The ``--plugin`` values, given before or after the command name."""
    return [*getattr(args, "root_plugins", []), *getattr(args, "plugins", [])]


def load_user_plugins(plugins: list[str]) -> None:
    """Load the environment's and the command line's plugins, and pass the latter on to worker processes through
    the environment (absolute paths, so a worker in another directory finds them)."""
    load_plugins()
    if not plugins:
        return
    given = []
    for plugin in plugins:
        loaded = load_plugin(plugin)
        given.append(loaded if os.path.isabs(loaded) else plugin)
    known = plugin_list(os.environ.get(PLUGINS_ENV, ""))
    os.environ[PLUGINS_ENV] = os.pathsep.join(dict.fromkeys([*known, *given]))


def _user_error(err: BaseException) -> str | None:
    """The one-line message for an exception that is a user's mistake, else None (a bug: let it show)."""
    from pydantic import ValidationError

    from metablocks.sweep.results import SweepLocked

    if isinstance(err, (RecipeError, RegistryError, SweepLocked)):
        return str(err)
    if isinstance(err, ValidationError):  # a flag's value out of a config's bounds (TrainConfig, DataConfig, ...)
        lines = [f"{'.'.join(map(str, e['loc'])) or err.title}: {e['msg']} (given: {e.get('input')!r})"
                 for e in err.errors(include_url=False)]
        return f"invalid {err.title}: " + "; ".join(lines)
    if isinstance(err, OSError) and getattr(err, "filename", None) is not None:
        return f"{err.strerror or err}: {err.filename}"
    if isinstance(err, FileNotFoundError):
        return str(err)
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        load_user_plugins(plugins_of(args))
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `metablocks list | head`: the reader left; stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as a tool killed by the closed pipe reports
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
