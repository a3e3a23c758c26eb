"""The live transaction: a step's layer committed to the root under a durable journal,
crash recovery, and the kept dances that `disco rollback` undoes (DESIGN §8).

Imports the engine (change records), the tree and the basics.
"""
