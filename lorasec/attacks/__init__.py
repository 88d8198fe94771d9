"""Training-time attacks (``poison``) and the metrics that score them (``metrics``)."""
