"""What the pack reads from a ComfyUI host (model facts, schedules), shared by the nodes and the trainer's
ComfyUI adapter. Importing it has no side effects (unlike ``nodes``, which registers the pack)."""
