"""Model optimization: quantize, prune and evaluate ONNX models into new repository versions.

`batchserve optimize quantize|prune|evaluate` (app.optimize.cli). Each command that makes a
variant measures it against the version it came from (app.optimize.evaluate), lets it into the
repository only if the accuracy guard passes (app.optimize.guard), and writes it as the model's
next version with its report beside it (app.optimize.versions), so the server can serve it
next to the original and clients can A/B them by URL.

Nothing here is imported by the server: its extra dependencies (the `optimize` extra) are only
needed by these commands.
"""
