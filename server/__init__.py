"""Flower ServerApp side of fedser: regimes and MLflow tracking."""
