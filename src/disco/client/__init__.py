"""The node's side of the wire: its state directory and settings, the dance lock, the
transport to servers, the fetch of a node's parameters and modules, the push of its
report, and the systemd timer (DESIGN §2, §5, §13).

Imports the tree and the basics; the fetch calls transport, never the other way round.
"""
