"""NOOP rules: which commands have outside effects, the interceptor that stops them, the
asker that answers host questions, and the view a step sees at /var/disco (DESIGN §7).

Its data (the rules table, the interceptor, the shell disco-param) lives in data/.
Imports the engine, the tree and the basics.
"""
