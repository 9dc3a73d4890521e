"""The fedser command line, the study runner and the experiment files."""
