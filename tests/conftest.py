"""Suite-wide JAX settings (tests may set config; the library never does).

The suite's cost is XLA:CPU compilation, not execution: every test runs tiny
shapes once or twice. Most optimisations make compiling an EfficientNet several
times slower and buy nothing at these sizes, so they are off for every test.
"""

import jax

jax.config.update('jax_disable_most_optimizations', True)
