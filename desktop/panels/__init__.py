"""Dockable panels around the canvas; each subscribes to models and writes back through them."""
