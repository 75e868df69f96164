"""``python -m cli`` is the ``ctnode`` command."""

from cli import main

raise SystemExit(main())
