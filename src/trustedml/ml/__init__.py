"""The ML workloads of the examples, run on Spark with encrypted inputs and models.

Each workload is a module of :mod:`trustedml.ml.workloads` with ``main(argv)``;
``trustedml example NAME`` submits it in secure mode, and ``examples/`` holds a
script per workload for ``trustedml submit``.
"""
