#pragma once
// Shared by the C++ autograd kernels (one file per family): each registers an Autograd kernel for its
// forward ops, whose torch::autograd::Function redispatches below autograd and whose backward calls
// the family's backward op through the dispatcher, so that torch.compile traces both through the
// fake kernels of norm_ext/ops.py. A call that differentiates nothing skips the Function.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

#include "common/dtype.h"

namespace norm_ext::autograd {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The op `name` ("norm_ext::layer_norm") with the C++ signature Sig; look it up once per call site
// (a function-local static), as the lookup takes a lock.
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Calls a backward op from a backward formula. The engine runs a backward with grad mode off unless
// create_graph=True: then the call goes through the op's Autograd kernel, whose not-implemented
// fallback refuses a double backward (csrc/autograd/backward_ops.cpp); otherwise straight below
// autograd, which skips that fallback's boxed walk over the arguments on every backward.
template <typename Sig, typename... Args>
auto call_backward(const c10::TypedOperatorHandle<Sig>& op, const Args&... args) {
  if (at::GradMode::is_enabled()) return op.call(args...);
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

inline bool requires_grad(const Tensor& t) {
  return t.requires_grad();
}

inline bool requires_grad(const OptTensor& t) {
  return t.has_value() && t->requires_grad();
}

// Whether this call builds a graph node: grad mode on and some tensor argument requiring grad.
template <typename... Ts>
bool any_requires_grad(const Ts&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

inline OptTensor optional_of(const Tensor& t) {
  return t.defined() ? OptTensor(t) : std::nullopt;
}

}  // namespace norm_ext::autograd
