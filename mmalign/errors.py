"""Errors that mean "the user asked for something wrong", not "mmalign has a bug".

The launcher prints these as one line naming the culprit (config key, flag,
file) and exits with status 2; anything else keeps its traceback.
"""


class UsageError(ValueError):
  """Bad config value, flag, workdir or file; the message says what is allowed."""
