"""metagen building blocks: data, models, meta-learning, evaluation, training, tuning, registry.

Nothing here imports Prefect; only ``training`` and ``tuning`` import Ray.
"""
