"""The error type for mistakes a user can fix: a bad config, workdir or file.

Entry points (train.py, eval.py, the converters) print a `ConfigError` as one
line; its message names the problem and the fix.
"""


class ConfigError(ValueError):
  """A config, workdir or checkpoint that cannot work; says how to fix it."""
