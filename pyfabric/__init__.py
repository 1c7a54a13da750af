"""pyfabric: a Python node for the fabric protocol (talk to Erlang processes over TCP).

This module only re-exports the public API; it defines nothing itself.
"""
