"""Composed networks built from the attention layers."""
