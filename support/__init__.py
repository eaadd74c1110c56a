"""Helpers for the tests, the sample project and the benchmarks; not part of the product.

``netdef`` writes console-style network definitions and ``fashion_mnist`` builds console
datasets from Debian's Fashion-MNIST package. Neither is installed with
``sgd_influence_plugin`` nor copied into the console by ``sgd-influence install-plugin``;
scripts import them from a checkout (the repository root on ``sys.path``).
"""
