"""Prefect flows and the ``metagen`` command line: thin wrappers around ``components``."""
