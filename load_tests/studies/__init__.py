"""Studies that drive the commands a user runs (pruning, reload cycles) and write reports."""
