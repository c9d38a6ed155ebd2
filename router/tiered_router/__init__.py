"""tiered_router."""
