"""Running a search: the job spec, connecting to Ray, the executor, the driver of a session
(lease → replay → writer → loop), job submission and cluster configs; the CLI in its own wing,
:mod:`mpsearch.cluster.cli`.

Importing this package loads nothing: each module imports what it uses (Ray only where it runs).
"""
