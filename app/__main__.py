"""`python -m app` is `batchserve`."""

from app.cli import main

raise SystemExit(main())
