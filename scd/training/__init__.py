"""How the built-in models are trained: the config (`config`, importable without torch), the loop (`train`:
resumable, snapshots) and the emergence study's plan (`study`)."""
