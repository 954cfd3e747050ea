#pragma once
// Shared by the C++ autograd kernels (one file per family): each registers an Autograd kernel for its
// forward ops that calls the op below autograd and, when something requires grad, makes a graph node
// whose backward calls the family's backward op through the dispatcher, so that torch.compile traces
// both through the fake kernels of norm_ext/ops.py. A call that differentiates nothing makes no node.
//
// The nodes are written as torch's generated ones are (NativeLayerNormBackward0): saved tensors as
// SavedVariable members, attributes as plain ones, one edge per tensor argument. Through
// torch::autograd::Function, the same node cost LayerNorm 1x768 about 2.5x the instructions torch
// spends building its graph (a string-keyed map of saved values, the metadata of every argument and
// output, a generic output wrapper), and made forward-with-grad slower than torch's.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>

#include "common/dtype.h"

namespace norm_ext::autograd {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::SwapSavedVariables;

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

// torch 2.14 holds graph nodes by c10::intrusive_ptr and declares Node in node.h; earlier versions
// hold them by std::shared_ptr, deleted through torch's deleteNode.
#if __has_include(<torch/csrc/autograd/node.h>)
template <class N>
c10::intrusive_ptr<N> new_node() {
  return c10::make_intrusive<N>();
}
inline c10::intrusive_ptr<Node> handle_of(Node* node) {
  return node->getptr();
}
#else
template <class N>
std::shared_ptr<N> new_node() {
  return std::shared_ptr<N>(new N(), torch::autograd::deleteNode);
}
inline std::shared_ptr<Node> handle_of(Node* node) {
  return node->shared_from_this();
}
#endif

inline bool has_forward_grad(const Tensor& t) {
  return t.defined() && t._fw_grad(/*level=*/0).defined();
}

inline bool has_forward_grad(const OptTensor& t) {
  return t.has_value() && has_forward_grad(*t);
}

// The backward of one forward call. A derived node saves its tensors with save(), keeps its other
// attributes as members, computes its inputs' gradients in backward() and lists the attributes that
// backward() reads in collect_attrs(), which compiled autograd keys its cache on.
template <size_t NumSaved>
class NormNode : public Node {
 public:
  // `is_output`: `t` is a differentiable output of this node's own forward (history already set),
  // saved without its grad_fn so that the node does not own itself.
  void save(size_t i, const Tensor& t, bool is_output = false) {
    saved_[i] = SavedVariable(t, is_output);
    saved_is_output_[i] = is_output;
  }

  void save(size_t i, const OptTensor& t) {
    if (t.has_value()) save(i, *t);
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable& s : saved_) s.reset_data();
  }

  // torch 2.6 declares compiled_args non-const and later versions const: whichever matches overrides.
  void compiled_args(CompiledNodeArgs& args) const { collect_compiled_args(args); }
  void compiled_args(CompiledNodeArgs& args) { collect_compiled_args(args); }

  // Compiled autograd's contract: swap in its saved tensors, apply, swap back.
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& swap) override {
    for (SavedVariable& s : saved_) swap.before(s);
    variable_list result = apply(variable_list(grads));
    for (SavedVariable& s : saved_) swap.after(s);
    return result;
  }

 protected:
  Tensor saved(size_t i) const { return saved_[i].unpack(handle_of(const_cast<NormNode*>(this))); }

  OptTensor saved_optional(size_t i) const { return optional_of(saved(i)); }

  // The gradient of the forward's i-th tensor argument is wanted by this backward pass.
  bool wants(size_t i) const { return task_should_compute_output(i); }

  virtual variable_list backward(variable_list&& grads) = 0;
  virtual void collect_attrs(CompiledNodeArgs& args) const = 0;

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return backward(std::move(grads));
  }

 private:
  void collect_compiled_args(CompiledNodeArgs& args) const {
    for (size_t i = 0; i < NumSaved; ++i) args.collect(saved_[i], saved_is_output_[i]);
    collect_attrs(args);
  }

  std::array<SavedVariable, NumSaved> saved_;
  std::array<bool, NumSaved> saved_is_output_{};
};

// A node of type N for a forward call whose differentiable tensor arguments are `inputs`: one edge
// each, in order (empty for an absent optional), which is the order of backward()'s results.
template <class N, class... Inputs>
auto make_node(const char* op, const Inputs&... inputs) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(has_forward_grad(inputs) || ...), "norm_ext::", op,
                              ": forward-mode automatic differentiation is not implemented");
  auto node = new_node<N>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// Makes `node` the grad_fn of the forward's differentiable outputs, in the order backward() receives
// their gradients.
template <class NodePtr>
void set_history(const NodePtr& node, std::initializer_list<Tensor> outputs) {
  for (const Tensor& out : outputs) torch::autograd::set_history(out, node);
}

}  // namespace norm_ext::autograd
