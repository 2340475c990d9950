"""Low-level building blocks: byte layouts and cryptographic primitives.

Everything here is easy to misuse. Prefer the recipes in :mod:`trustedml.keys`
and the package root; this layer exists so that each format is framed in one place.
"""
