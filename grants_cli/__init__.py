"""The operator CLI (``grants`` / ``python -m grants_cli``): bulk jobs, dead-letter tooling. Not deployed."""
