"""Training: schedules, the per-worker training loop, checkpoints, metrics, export."""
