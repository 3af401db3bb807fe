"""The generator's own flows: `python -m flows.demo [DEST]` scaffolds a project and runs its lifecycle
once."""
