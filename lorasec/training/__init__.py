"""Training: the jitted optax step and its loop with checkpoints (``trainer``), the objectives (``losses``), and
predictions with the attack metrics (``evaluation``)."""
