"""Flower ClientApp side of fedser (each node holds one IEMOCAP session)."""
