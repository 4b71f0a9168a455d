"""Tuning: measure a model per batch size and instance layout, as the server runs it, and
choose how it is served by one rule.

- `measure` and `timing`: sessions made as the server makes them, timed in windows.
- `plan`: the one rule, from measured points to a layout, a batch and max_batch_size.
- `low_load`: the lone-request checks (spinning threads, a low-load-only instance).
- `gpu`: where tuning measures, and the layouts it compares on a GPU.
- `at_load`: tuning at load, within a time budget, its result (`result`) cached (`cache`).

The repository asks `at_load` for a tuning and applies it; `batchserve profile` (app.profile)
measures longer and writes the same plan into config.toml. Nothing here reads a config.
"""
