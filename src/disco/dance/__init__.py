"""Orchestration: one way through a dance (fetch, order, steps, changes, commit, report)
and the seed's NOOP shell, which put the client, engine, noop, live and report layers
together (DESIGN §6).

Only the command-line layer imports it.
"""
