"""An example medad plugin: see detector.py."""
