"""The seed's first example: proves the launcher runs native Python.

trustedml run -- python examples/helloworld.py
"""

print("Hello World")
