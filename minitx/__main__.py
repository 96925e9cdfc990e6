"""`python -m minitx ...`: see minitx.cli."""
import sys

from minitx.cli import main

sys.exit(main())
