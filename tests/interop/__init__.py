"""Interop: ``python -m msgtrans serve`` with clients that are not msgtrans, and msgtrans clients
with servers that are not msgtrans."""
