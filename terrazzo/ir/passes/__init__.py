"""Graph → Graph passes over the IR, one per module; each leaves the graph verifiable."""

from terrazzo.ir.passes.fuse_elementwise import fuse_elementwise

__all__ = ["fuse_elementwise"]
