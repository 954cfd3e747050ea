// The backward ops have no derivative of their own. torch's not-implemented autograd kernel makes a
// double backward through one (create_graph=True, then differentiating the gradient) raise
// "derivative for norm_ext::<op> is not implemented", where autograd's default would only warn and
// treat the gradient as a constant; when nothing requires grad it just redispatches. A kernel in
// Python (torch.library.register_autograd) did the same at the cost of a Python call in every
// backward. power_norm_backward, which writes its running Gamma, keeps torch's default.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  for (const char* op : {"layer_norm_backward", "rms_norm_backward", "weight_norm_backward", "group_norm_backward",
                         "batch_norm_train_backward", "batch_norm_backward_reduce", "batch_norm_backward_elemt"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
