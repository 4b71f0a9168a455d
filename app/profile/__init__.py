"""`batchserve profile`: find the batch sizes and instance layout a model should be served
with on the hardware at hand.

It measures the model's compute per batch size and, on CPU, per instance layout (count x
threads), with sessions set up exactly as the server sets them up (app.runtime.OnnxInstance)
and timed with the code `optimize evaluate` uses (app.timing); recommends max_batch_size,
preferred_batch_sizes and [[instances]] for a latency target (app.profile.recommend), and can
write them into the model's config.toml, comments kept (app.profile.write).

Nothing here is imported by the server; the plot and --write need the `optimize` extra.
"""
