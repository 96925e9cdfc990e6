"""One module per `python -m minitx` subcommand: `add_parser(subparsers)` and `run(args)`."""
