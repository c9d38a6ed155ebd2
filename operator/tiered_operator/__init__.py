"""tiered_operator."""
