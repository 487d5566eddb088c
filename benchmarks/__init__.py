"""Benchmark scripts run from the repository (`python -m benchmarks.throughput`, `processor_step`,
`student_scaling`) and their results. The installed harness (`budgetforce bench`) is `budgetforce.bench`.
"""
