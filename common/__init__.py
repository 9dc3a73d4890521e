"""Pure ML core of fedser: config, corpora, features, splits, models, trainers (no flwr, no mlflow)."""
