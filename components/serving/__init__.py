"""What a consumer of a registered model runs: the MLflow pyfunc generator (models-from-code)."""
