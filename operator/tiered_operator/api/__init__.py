"""The operator's resources: pydantic specs, CRD generation, offline validation, object parsing, conditions.

Imports nothing else of tiered_operator."""
