"""The compound-coefficient search and the scaling studies of Tan & Le (2019).

grid.py (the search space, the MAC solvers, shards), plan.py (the runs a
command trains), runs.py (each run as a train.py workdir), cost.py (the
estimate), report.py (the table), plots.py (the figures), __main__.py (the
commands); docs/scaling.md is the user's guide.
"""
