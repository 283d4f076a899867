"""Training engine: loop, schedules, checkpoints, distributed, logging. Knows nothing of CIM."""
