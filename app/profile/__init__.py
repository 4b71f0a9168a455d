"""`batchserve profile`: find the batch sizes and instance layout a model should be served
with on the hardware at hand.

It measures the model's compute per batch size and, on CPU, per instance layout (count x
threads), with app.tuning's measurement (sessions set up as the server sets them up, timed
as `optimize evaluate` times them); recommends max_batch_size, preferred_batch_sizes and
[[instances]] by the rule tuning at load uses (app.tuning.plan), and can write them into
the model's config.toml, comments kept (app.profile.write). This package is the command
and its report.

Nothing here is imported by the server; the plot and --write need the `optimize` extra.
"""
