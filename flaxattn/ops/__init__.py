"""Shared primitives: torch-compatible layers, checks, local attention, reversible stacks."""
