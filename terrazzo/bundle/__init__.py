"""terrazzo.bundle (see DESIGN.md)."""
