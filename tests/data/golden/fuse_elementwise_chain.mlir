// RUN: fuse_elementwise
// A matmul → add → relu chain fuses into the matmul; the second matmul has no elementwise
// consumer and stays. FLOPs add up; the two 16 KiB intermediates leave bytes_read/written.
"tz.graph"() ({
^bb0(%x: tensor<8x256xf32>):
  %lv = "tz.matmul"(%x) {name = "lv", op_class = "matmul", flops = 2097152, bytes_read = 8192, bytes_written = 16384, param_bytes = 524288} : (tensor<8x256xf32>) -> tensor<8x512xf32>
  %lv1 = "tz.add"(%lv) {name = "lv1", op_class = "elementwise", flops = 4096, bytes_read = 16384, bytes_written = 16384, param_bytes = 2048} : (tensor<8x512xf32>) -> tensor<8x512xf32>
  %lv2 = "tz.relu"(%lv1) {name = "lv2", op_class = "elementwise", flops = 4096, bytes_read = 16384, bytes_written = 16384, param_bytes = 0} : (tensor<8x512xf32>) -> tensor<8x512xf32>
  %lv3 = "tz.matmul"(%lv2) {name = "lv3", op_class = "matmul", flops = 81920, bytes_read = 16384, bytes_written = 320, param_bytes = 20480} : (tensor<8x512xf32>) -> tensor<8x10xf32>
  "tz.output"(%lv3) : (tensor<8x10xf32>) -> ()
}) {sym_name = "mlp", inputs = ["x"]} : () -> ()
// -----
"tz.graph"() ({
^bb0(%x: tensor<8x256xf32>):
  %lv2 = "tz.matmul"(%x) {name = "lv", op_class = "matmul", flops = 2105344, bytes_read = 8192, bytes_written = 16384, param_bytes = 526336, attrs = {fused = ["add", "nn.relu"], members = ["lv", "lv1", "lv2"]}, results = ["lv2"]} : (tensor<8x256xf32>) -> tensor<8x512xf32>
  %lv3 = "tz.matmul"(%lv2) {name = "lv3", op_class = "matmul", flops = 81920, bytes_read = 16384, bytes_written = 320, param_bytes = 20480} : (tensor<8x512xf32>) -> tensor<8x10xf32>
  "tz.output"(%lv3) : (tensor<8x10xf32>) -> ()
}) {sym_name = "mlp", inputs = ["x"]} : () -> ()
