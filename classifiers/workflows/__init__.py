"""Workflows: what each command does, from data and feature caches to models and results.
A model is loaded and verified once per command (model.py) and shared by every step."""
