"""``ConfigError``: the error of every check of a ``config.<field>``.

``configuration.validate_config`` checks a config before anything runs; the modules that read a
field (and own its allowed values) check it again where they use it.  Both raise
``ConfigError``, so that a launcher prints it as one line (``launch/cli.py``) while a bare
``ValueError`` stays what it is: a bug, with its traceback.
"""


class ConfigError(ValueError):
  """A ``config.<field>`` is invalid: the message names it and how to fix it."""
