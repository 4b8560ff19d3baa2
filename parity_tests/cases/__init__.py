"""Parity cases, one module per mechanism family."""
