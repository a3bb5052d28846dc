"""terrazzo.runtime (see DESIGN.md)."""
