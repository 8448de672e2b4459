"""``python -m mpsearch.cluster.cli``: the same as the ``mpsearch`` command."""

from . import main

main()
