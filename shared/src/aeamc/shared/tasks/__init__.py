"""Task kinds: deterministic chunk functions shared by the agent and the coordinator."""
