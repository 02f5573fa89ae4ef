"""critneuron."""
