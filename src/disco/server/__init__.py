"""The server's side (disco-server): serving the tree over rsync+ssh, the fleet's
reports, and mirrors (DESIGN §5, §13).

Imports the client's transport, reports, the tree and the basics.
"""
