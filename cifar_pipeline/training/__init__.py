"""Training: the loop, optimiser, checkpoints, runtime (device, precision, CPU tuning), health and time budget."""
