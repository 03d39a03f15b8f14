"""Training under DeepSpeed: parameter groups, schedules, engines, checkpoints, metrics, the loop."""
