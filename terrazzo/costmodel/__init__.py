"""terrazzo.costmodel (see DESIGN.md)."""
