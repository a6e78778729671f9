"""`python -m medad ...` is the `medad` console script."""

from medad.cli import main

raise SystemExit(main())
