"""`python -m minitx grade [EXERCISE ...]`: grade the course exercises in tutorials/exercises/.

Runs from a minitx checkout (or pass --dir) and needs the test extra (hypothesis):
`pip install -e ".[test]"`. Exit status 0 when nothing attempted fails, 1 otherwise, 2 for a
usage problem (no hypothesis, no exercises directory, an unknown exercise name).
"""


def add_parser(subparsers):
    """The `grade` subcommand's parser."""
    p = subparsers.add_parser(
        "grade", help="check your solutions to tutorials/exercises against minitx's own",
        description="Compare each exercise function you wrote with minitx's reference on "
                    "random inputs (hypothesis) and print pass, not attempted, or the first "
                    "failing example with its shapes and largest difference.")
    p.add_argument("exercises", nargs="*", metavar="EXERCISE",
                   help="an exercise (02.online_softmax), a tutorial (02), a function name "
                        "(pack_a) or a file (ex03_gemm); default: all")
    p.add_argument("--dir", default=None,
                   help="the exercises directory (default: tutorials/exercises of the checkout "
                        "you are in)")
    p.add_argument("--examples", type=int, default=None,
                   help="random inputs per exercise (default: 25)")
    p.add_argument("--list", action="store_true", help="list the exercises and exit")
    return p


def run(args):
    """Grade; returns the exit status."""
    from minitx import grade

    if args.list:
        for ex in grade.select(args.exercises):
            print(f"{ex.name:<34} {ex.file}")
        return 0
    if args.examples is not None and args.examples < 1:
        raise grade.GradeError(f"--examples must be >= 1, got {args.examples}")
    results = grade.grade(args.exercises, args.dir, args.examples or grade.EXAMPLES)
    return 1 if any(r.status == "fail" for r in results) else 0
