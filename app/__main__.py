"""`python -m app` is `batchserve`."""

from app.cli import main

# Guarded: the processes that parse large JSON bodies are spawned, and import this module.
if __name__ == "__main__":
    raise SystemExit(main())
