"""The GPU check: batchserve on a GPU against raw ONNX Runtime there (README "Check it on
a GPU")."""
