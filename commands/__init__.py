"""The command line's commands, one module per concern; cli.py puts them under one group.

Each command parses its options (many generated from the settings declarations), calls one
library function and prints what it returns; domain errors become one line in cli.py."""
