"""Package data: the agent's rule tables (finding regions, follow-up rules)."""
