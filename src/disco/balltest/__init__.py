"""disco test: ball scenarios on scratch roots; disco lint: a server tree checked."""
