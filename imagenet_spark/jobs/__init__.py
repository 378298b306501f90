"""The drivers of the jobs: partition, train, tune, evaluate, predict.

Why a package of its own: each job's orchestration (resolve, check, plan, run on Spark, publish, report) lives
in one obvious module here, over the library below it. ``data/``, ``train/``, ``serving/`` and ``models/``
hold executor-side and local work and never import this package or ``spark/``; the entry points in the
repository's ``jobs/`` folder, the CLI and the notebooks call these drivers.
"""
