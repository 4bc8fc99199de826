"""Demo artifact: the cart API service (packaged, never executed)."""
