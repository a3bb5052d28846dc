"""Private protobuf descriptor pool for Terrazzo's vendored KServe v2 and health stubs.

tritonclient registers the same ``inference.*`` symbols in protobuf's default pool; keeping
ours apart lets server and stock client live in one process. The wire format is identical.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
