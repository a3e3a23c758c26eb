"""Reports: what each step cost, the last 50 dances on disk, and the HTML page (DESIGN §9).

Imports the engine (a step's usage) and the basics.
"""
