"""Demo artifact: the billing ledger API (packaged, never executed)."""
