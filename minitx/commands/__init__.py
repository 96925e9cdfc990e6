"""One module per `python -m minitx` subcommand, each with `add_parser(subparsers)` and
`run(args) -> int`; `minitx.cli.COMMANDS` lists them."""
