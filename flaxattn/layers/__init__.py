"""Attention layers, one file per mechanism family (channels-last)."""
