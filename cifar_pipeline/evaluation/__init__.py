"""Evaluation: score a trained checkpoint on the test set (with test-time augmentation)."""
