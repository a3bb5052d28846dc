"""terrazzo.report (see DESIGN.md)."""
