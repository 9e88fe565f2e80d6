"""The base every package of the project stands on: domain errors (errors.py), settings declared
once (settings_schema.py), how a command runs (run_context.py) and what made an output
(provenance.py). It imports nothing else of the project, so every layer may import it."""
