// RUN: fuse_elementwise
// The add reads the conv's output and a value (%skip) computed after the conv: the fused op
// takes the add's place so %skip is defined before it, and gains %skip as an input. The
// rest of the chain (multiply → tanh) fuses too; everything sits on the same device/stage.
"tz.graph"() ({
^bb0(%x: tensor<1x4x8x8xf32>):
  %conv = "tz.conv2d"(%x) {name = "conv", op_class = "conv", flops = 36864, bytes_read = 1024, bytes_written = 1024, param_bytes = 576, attrs = {padding = [1, 1, 1, 1], strides = [1, 1]}, device = "cpu", stage = 0} : (tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  %skip = "tz.softmax"(%x) {name = "skip", op_class = "softmax", flops = 1280, bytes_read = 1024, bytes_written = 1024, param_bytes = 0, attrs = {axis = -1}, device = "cpu", stage = 0} : (tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  %sum = "tz.add"(%conv, %skip) {name = "sum", op_class = "elementwise", flops = 256, bytes_read = 2048, bytes_written = 1024, param_bytes = 0, device = "cpu", stage = 0} : (tensor<1x4x8x8xf32>, tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  %s2 = "tz.multiply"(%sum) {name = "s2", op_class = "elementwise", flops = 256, bytes_read = 1024, bytes_written = 1024, param_bytes = 4, device = "cpu", stage = 0} : (tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  %t = "tz.tanh"(%s2) {name = "t", op_class = "elementwise", flops = 256, bytes_read = 1024, bytes_written = 1024, param_bytes = 0, device = "cpu", stage = 0} : (tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  "tz.output"(%t) : (tensor<1x4x8x8xf32>) -> ()
}) {sym_name = "resblock", inputs = ["x"]} : () -> ()
// -----
"tz.graph"() ({
^bb0(%x: tensor<1x4x8x8xf32>):
  %skip = "tz.softmax"(%x) {name = "skip", op_class = "softmax", flops = 1280, bytes_read = 1024, bytes_written = 1024, param_bytes = 0, attrs = {axis = -1}, device = "cpu", stage = 0} : (tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  %t = "tz.conv2d"(%x, %skip) {name = "conv", op_class = "conv", flops = 37632, bytes_read = 2048, bytes_written = 1024, param_bytes = 580, attrs = {fused = ["add", "multiply", "tanh"], members = ["conv", "sum", "s2", "t"], padding = [1, 1, 1, 1], strides = [1, 1]}, device = "cpu", stage = 0, results = ["t"]} : (tensor<1x4x8x8xf32>, tensor<1x4x8x8xf32>) -> tensor<1x4x8x8xf32>
  "tz.output"(%t) : (tensor<1x4x8x8xf32>) -> ()
}) {sym_name = "resblock", inputs = ["x"]} : () -> ()
