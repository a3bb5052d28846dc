"""terrazzo.codegen (see DESIGN.md)."""
