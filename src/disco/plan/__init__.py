"""Plans: a change to the server tree NOOP-danced beside the live tree, per node (DESIGN §15)."""
