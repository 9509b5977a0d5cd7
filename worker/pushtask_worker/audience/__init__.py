"""The audience phase: read sources, drop bad rows with a reason, insert recipients."""
