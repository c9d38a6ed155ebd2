"""tiered_serving."""
