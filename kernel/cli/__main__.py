"""``python -m kernel.cli``: the ``kernel`` command."""

from kernel.cli import main

main()
