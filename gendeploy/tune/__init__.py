"""``gendeploy tune``: the served configuration with the most images per second within a latency
budget (or the lowest p99 above a throughput floor), measured on the real server by Triton's
Model Analyzer and perf_analyzer. See docs/tune.md."""
