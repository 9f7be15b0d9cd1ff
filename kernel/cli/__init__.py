"""The ``kernel`` command line (`main`, the ``kernel`` console script).

`kernel.cli.commands` holds the group and the commands, `kernel.cli.jobs`
the ``kernel jobs`` verbs, and the private `kernel.cli._output` how they
print: one ``error: ...`` line and exit status 2 for a bad argument, never a
traceback.
"""

from kernel.cli.commands import main

__all__ = ["main"]
