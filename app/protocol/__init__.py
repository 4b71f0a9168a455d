"""KServe v2 (Open Inference Protocol) types and codecs; knows nothing of batching or HTTP."""
