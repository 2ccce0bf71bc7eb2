"""Engines turn images and phrases into grounding results. Only this package touches torch."""
