"""The search as data: the spec, the method registry, pins, session records and the text of events.

Torch-free and textual-free: the engine, the session, the grid's view model, the CLI and the app all
read these types instead of re-deriving them. A default, a rule or a piece of text lives here once.
"""
