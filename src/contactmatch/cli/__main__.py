"""``python -m contactmatch.cli``: the ``contactmatch`` command without the console script."""

from contactmatch.cli import main

raise SystemExit(main())
