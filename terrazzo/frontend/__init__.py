"""terrazzo.frontend (see DESIGN.md)."""
