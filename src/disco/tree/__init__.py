"""The server tree as data: the parameters tree, modules and their order (DESIGN §3, §4).

Pure reading and checking of what a server holds, shared by the client and the server.
Imports only the basics (errors, run, files, quoting).
"""
