"""Training: pure train steps, optimizer, sharding, progressive schedule, run I/O."""
