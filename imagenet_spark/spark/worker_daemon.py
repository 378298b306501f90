"""Spark's Python worker daemon, importing the installed (byte-compiled) pyspark instead of Spark's pyspark.zip.

Why: Spark starts its Python daemon, and the workers the daemon forks, with ``$SPARK_HOME/python/lib/pyspark.zip``
ahead of everything else on ``sys.path``. Python keeps no bytecode for modules imported from a zip, so every
daemon and every worker compiles pyspark's modules from source again. On the 2-core development machine the
daemon took 0.9-1.4 s to import ``pyspark.daemon`` from the zip against 0.18 s from the installed package, and the
partition job's first task began 1.5 s later (issue #13; measured with and without, same tree, same session
settings). When pyspark is pip-installed, ``$SPARK_HOME`` *is* that installed package, so the zip holds the same
code as the directory around it: only then is the zip taken off the path, and Spark's own daemon runs unchanged.
With a Spark distribution of its own (a cluster's ``SPARK_HOME``) the path stays as Spark set it.

``spark/session.py`` names this module in ``spark.python.daemon.module`` only where the daemon runs this very
interpreter and imports this package from the same place (a local master); a cluster keeps Spark's daemon.
"""

from __future__ import annotations

import os
import sys

_ZIP = "pyspark.zip"


def without_duplicate_zip(path: list[str]) -> list[str]:
    """``path`` less any ``<root>/pyspark/python/lib/pyspark.zip`` whose ``<root>/pyspark`` package is itself on
    ``path`` (the pip-installed case: the zip and the package are one install). Anything else is kept in order."""
    roots = {os.path.abspath(entry) for entry in path if entry}

    def duplicate(entry: str) -> bool:
        if os.path.basename(entry) != _ZIP:
            return False
        package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(entry))))  # <root>/pyspark
        return (os.path.basename(package) == "pyspark" and os.path.dirname(package) in roots
                and os.path.isfile(os.path.join(package, "__init__.py")))

    return [entry for entry in path if not duplicate(entry)]


def main() -> None:
    """Run Spark's daemon with the duplicate zip off the path (before anything of pyspark is imported here, so
    the daemon and every worker it forks import the installed modules)."""
    sys.path[:] = without_duplicate_zip(sys.path)
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
