"""Adapters: the only modules that talk to the outside (Git, the Prefect API)."""
