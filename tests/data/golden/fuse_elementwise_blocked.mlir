// RUN: fuse_elementwise
// Nothing fuses: %a has two consumers, %b is a graph output, %c and %d sit on different
// devices, and an LLM decode never absorbs elementwise ops. The graph comes back unchanged.
"agent.graph"() ({
^bb0(%x: tensor<4x4xf32>, %kv: tensor<2x4x4xf16>):
  %a = "tz.matmul"(%x) {name = "a", op_class = "matmul", flops = 128, bytes_read = 64, bytes_written = 64, param_bytes = 64} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %a1 = "tz.relu"(%a) {name = "a1", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %a2 = "tz.exp"(%a) {name = "a2", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %b = "tz.matmul"(%a1) {name = "b", op_class = "matmul", flops = 128, bytes_read = 64, bytes_written = 64, param_bytes = 64} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %b1 = "tz.relu"(%b) {name = "b1", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %c = "tz.matmul"(%a2) {name = "c", op_class = "matmul", flops = 128, bytes_read = 64, bytes_written = 64, param_bytes = 64, device = "a100", stage = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %d = "tz.relu"(%c) {name = "d", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0, device = "cpu", stage = 1} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %tok = "llm.decode"(%kv) {name = "tok", op_class = "llm_decode", flops = 1000, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<2x4x4xf16>) -> tensor<4x4xf32>
  %tok1 = "tz.relu"(%tok) {name = "tok1", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  "agent.output"(%b) : (tensor<4x4xf32>) -> ()
  "agent.output"(%b1) : (tensor<4x4xf32>) -> ()
  "agent.output"(%d) : (tensor<4x4xf32>) -> ()
  "agent.output"(%tok1) : (tensor<4x4xf32>) -> ()
}) {sym_name = "blocked", inputs = ["x", "kv"]} : () -> ()
// -----
"agent.graph"() ({
^bb0(%x: tensor<4x4xf32>, %kv: tensor<2x4x4xf16>):
  %a = "tz.matmul"(%x) {name = "a", op_class = "matmul", flops = 128, bytes_read = 64, bytes_written = 64, param_bytes = 64} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %a1 = "tz.relu"(%a) {name = "a1", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %a2 = "tz.exp"(%a) {name = "a2", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %b = "tz.matmul"(%a1) {name = "b", op_class = "matmul", flops = 128, bytes_read = 64, bytes_written = 64, param_bytes = 64} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %b1 = "tz.relu"(%b) {name = "b1", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %c = "tz.matmul"(%a2) {name = "c", op_class = "matmul", flops = 128, bytes_read = 64, bytes_written = 64, param_bytes = 64, device = "a100", stage = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %d = "tz.relu"(%c) {name = "d", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0, device = "cpu", stage = 1} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  %tok = "llm.decode"(%kv) {name = "tok", op_class = "llm_decode", flops = 1000, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<2x4x4xf16>) -> tensor<4x4xf32>
  %tok1 = "tz.relu"(%tok) {name = "tok1", op_class = "elementwise", flops = 16, bytes_read = 64, bytes_written = 64, param_bytes = 0} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  "agent.output"(%b) : (tensor<4x4xf32>) -> ()
  "agent.output"(%b1) : (tensor<4x4xf32>) -> ()
  "agent.output"(%d) : (tensor<4x4xf32>) -> ()
  "agent.output"(%tok1) : (tensor<4x4xf32>) -> ()
}) {sym_name = "blocked", inputs = ["x", "kv"]} : () -> ()
