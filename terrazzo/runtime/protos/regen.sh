#!/usr/bin/env bash
# Regenerate the vendored gRPC stubs (grpc_service.proto and model_config.proto are Triton's
# official files, vendored; see their first lines). Run from anywhere: terrazzo/runtime/protos/regen.sh
#
# The generated modules register into a private descriptor pool (_pool.POOL) instead of
# protobuf's default pool: tritonclient ships its own `inference.*` messages in the default
# pool, and both must load in one process (tests, benchmarks) without a symbol clash. The
# wire format is unaffected.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
"$py" -m grpc_tools.protoc -I . \
  --python_out=. --grpc_python_out=. \
  terrazzo/runtime/protos/grpc_service.proto terrazzo/runtime/protos/model_config.proto \
  terrazzo/runtime/protos/health.proto
rm -f terrazzo/runtime/protos/model_config_pb2_grpc.py  # no services in model_config.proto
for f in terrazzo/runtime/protos/grpc_service_pb2.py terrazzo/runtime/protos/model_config_pb2.py \
  terrazzo/runtime/protos/health_pb2.py; do
  sed -i \
    -e 's/^from google.protobuf import descriptor_pool as _descriptor_pool$/from terrazzo.runtime.protos._pool import POOL as _POOL/' \
    -e 's/_descriptor_pool\.Default()/_POOL/' "$f"
  grep -q '_POOL.AddSerializedFile' "$f" || { echo "regen.sh: pool rewrite failed in $f" >&2; exit 1; }
done
echo "regenerated stubs in terrazzo/runtime/protos"
