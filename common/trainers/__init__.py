"""Trainers: the one training loop (base.py), the GAN stages, the SER trainer, and the registry."""
