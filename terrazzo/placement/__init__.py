"""terrazzo.placement (see DESIGN.md)."""
