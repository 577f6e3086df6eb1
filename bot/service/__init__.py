"""Use cases: parse a command, load state through a unit of work, apply the rules, commit."""
