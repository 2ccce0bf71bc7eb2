"""The bundled demo model: synthetic scenes, its answer format, training and evaluation helpers."""
