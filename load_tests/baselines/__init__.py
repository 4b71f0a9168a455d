"""What users would otherwise run, served on the same stack for comparison (bench report)."""
