"""How layers run fast on one backend, each with its gradient.

The layers in `layers.py` and `models.py` describe the network; the modules
here are alternative formulations of some of them for XLA:CPU, chosen by the
resolved `execution.Execution`, each held to the plain layer by an equality
test in tests/kernels_test.py.
"""
