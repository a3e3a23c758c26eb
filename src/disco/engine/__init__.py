"""The engine: each step in a fresh overlay layer, in namespaces of its own (DESIGN §7, §12).

The zygote and the dance's side of it, mounts, layers and their folding, delivery staging,
and reading what a step changed. Imports the tree and the basics; knows nothing of NOOP
rules, commits, reports or servers.
"""
