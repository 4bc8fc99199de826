"""Triggers do the async waiting, on the triggerer, holding no worker slot."""
