"""``python -m node`` is the ``ctnode`` command."""

from node.cli import main

raise SystemExit(main())
