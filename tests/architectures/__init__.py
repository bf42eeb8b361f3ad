"""Sharing architectures: defining behaviour, ownership, save/load, and short training runs."""
