"""Next-scale generation: the KV-cached sampler, iteration schedules, editing."""
