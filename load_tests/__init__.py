"""Load generators and benchmarks for batchserve (or any KServe v2 server)."""
