"""The agent: workflow, tools, trace, guarded narrative and report."""
