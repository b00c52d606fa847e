"""Training: the one loop (`loop.train`), its config, optimizer pieces, schedules, checkpoints."""
