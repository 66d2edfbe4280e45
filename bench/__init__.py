"""The Cortex benchmark: the real executor and database against a bare `openai` loop (the floor).

`python -m bench.run` (or `make bench`) starts the fake model server, runs every measured scenario
in its own process (so peak memory belongs to one side alone) and prints the figures as JSON.
"""
