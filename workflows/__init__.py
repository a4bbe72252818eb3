"""Compositions of the stage Makers: the active-learning loop and the campaigns."""
