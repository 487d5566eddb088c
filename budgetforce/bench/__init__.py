"""budgetforce's benchmark harness: accuracy vs thinking budget (the s1 sweep) and HTTP load.

Run as `budgetforce bench accuracy ...` and `budgetforce bench load ...` (see `budgetforce.bench.cli`).
"""
