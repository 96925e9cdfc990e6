"""`python -m minitx ...`: see minitx.cli."""
import sys

try:
    from minitx.cli import main
except ValueError as e:           # a bad MINITX_BACKEND (or similar) found while importing
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

sys.exit(main())
