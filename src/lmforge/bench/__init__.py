"""`lmforge bench`: latency and throughput of the Engine, with baselines and the machine's limits.

metrics.py defines every metric once; runner.py times cases; roofline.py measures the hardware
limits; env.py records the environment; report.py writes tables, JSON, CSV and plots.
"""
