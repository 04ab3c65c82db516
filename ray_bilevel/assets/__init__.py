"""Shipped small weights, the scripts that rebuild them, and their loaders."""
