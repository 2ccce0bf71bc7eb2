"""Training and evaluation of the bundled demo model (not shipped in the app package)."""
