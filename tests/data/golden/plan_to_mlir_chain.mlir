// RUN: plan_to_mlir
// The placement pass writes device and stage on every op, the plan's SLA, rps, latency and
// USD/h in the graph attrs, and the model it came from (model, model_sha256).
"tz.graph"() ({
^bb0(%x: tensor<2x4xf32>):
  %mm = "tz.matmul"(%x) {name = "mm", op_class = "matmul", flops = 64, bytes_read = 96, bytes_written = 32, param_bytes = 64} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %act = "tz.op"(%mm) {name = "act", kind = "relu", op_class = "elementwise", flops = 8, bytes_read = 32, bytes_written = 32, param_bytes = 0} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %out = "tz.add"(%act) {name = "out", op_class = "elementwise", flops = 8, bytes_read = 32, bytes_written = 32, param_bytes = 16} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  "tz.output"(%out) : (tensor<2x4xf32>) -> ()
}) {sym_name = "chain", inputs = ["x"], attrs = {source = "onnx"}} : () -> ()
// -----
"tz.graph"() ({
^bb0(%x: tensor<2x4xf32>):
  %mm = "tz.matmul"(%x) {name = "mm", op_class = "matmul", flops = 64, bytes_read = 96, bytes_written = 32, param_bytes = 64, device = "t4", stage = 0} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %act = "tz.op"(%mm) {name = "act", kind = "relu", op_class = "elementwise", flops = 8, bytes_read = 32, bytes_written = 32, param_bytes = 0, device = "t4", stage = 0} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  %out = "tz.add"(%act) {name = "out", op_class = "elementwise", flops = 8, bytes_read = 32, bytes_written = 32, param_bytes = 16, device = "cpu", stage = 1} : (tensor<2x4xf32>) -> tensor<2x4xf32>
  "tz.output"(%out) : (tensor<2x4xf32>) -> ()
}) {sym_name = "chain", inputs = ["x"], attrs = {latency_s = 0.003 : f64, model = "zoo:chain", model_sha256 = "abababababababababababababababababababababababababababababababab", rps = 1.0 : f64, sla_s = 0.05 : f64, solver = "milp", source = "onnx", usd_per_hour = 0.75 : f64}} : () -> ()
