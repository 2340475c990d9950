"""The first of the examples: proves the launcher runs native Python.

trustedml run -- python examples/helloworld.py
"""

print("Hello World")
