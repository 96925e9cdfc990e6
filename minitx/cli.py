"""Command line: `python -m minitx <command>`, one module per command in `minitx.commands`.

The CLI only wires arguments to library functions. Every flag's range is checked before any work
starts. Problems a user can fix (a bad flag value, a bad data file, a damaged checkpoint, a
diverged run) print one `error:` line and exit with status 2, without a traceback.
"""
import argparse
import importlib
import sys

from minitx.checkpoint import CheckpointError
from minitx.data import DataError
from minitx.safetensors import SafetensorsError
from minitx.train import TrainingError

# command name -> module defining add_parser(subparsers) and run(args); imported when used
COMMANDS = {
    "train": "minitx.commands.train",
    "generate": "minitx.commands.generate",
    "quantize": "minitx.commands.quantize",
    "grade": "minitx.commands.grade",
    "finetune": "minitx.commands.finetune",
    "chat": "minitx.commands.chat",
    "export-gguf": "minitx.commands.export_gguf",
    "export-hf": "minitx.commands.export_hf",
}

USER_ERRORS = (DataError, CheckpointError, SafetensorsError, TrainingError, ValueError,
               TypeError, OSError, MemoryError)


class UsageError(ValueError):
    """A command line that cannot be run as given."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage problem is one `error:` line (exit 2) like every other error."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(argv=None):
    """The parser with every command whose module imports; returns (parser, {name: module})."""
    parser = _Parser(prog="python -m minitx",
                     description="minitx: train, sample, quantize and inspect small transformers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    wanted = [a for a in (argv or []) if a in COMMANDS][:1] or list(COMMANDS)
    modules = {}
    for name in COMMANDS:
        if name not in wanted:      # only the chosen command's module is imported
            sub.add_parser(name, help=f"(see python -m minitx {name} --help)")
            continue
        modules[name] = importlib.import_module(COMMANDS[name])
        modules[name].add_parser(sub)
    return parser, modules


def main(argv=None):
    from minitx import backend
    if backend.ENV_ERROR:
        print(f"error: {backend.ENV_ERROR}", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint written is intact", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
