"""Integrations with other tools, each behind its own extra and imported only on use.

- :mod:`mlpipe.integrations.mlflow` (``pip install 'mlpipe[mlflow]'``):
  experiment tracking of pipeline runs, model registry, promotion gates.

Nothing here is imported by ``import mlpipe``.
"""
