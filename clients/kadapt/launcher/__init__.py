"""Composition roots: the embedded one-process stack and the multi-process deployment (`kadapt up`).

This is the one place that knows every service; the services themselves never import each other.
"""
