// The Python extension module: importing it loads this shared library, whose static initializers
// register the ops with the dispatcher (ops are reached via torch.ops.norm_ext). Its functions are
// non-op helpers: which instruction set the CPU kernels run with, and the eager calls below.
//
// The eager calls. From Python, torch.ops.norm_ext.layer_norm(...) converts every argument to an
// IValue by reading the schema, calls the op boxed, and wraps every output, statistics included:
// 1.3x what torch.nn.functional.layer_norm's generated binding costs on a 1x768 input, which is all
// of the call at decoding sizes. These functions read the arguments of norm_ext.functional straight
// into C++ values, call the same op through the dispatcher unboxed (autograd, autocast, Python modes
// and every backend run as before), and return just the output. They take only the plain form of a
// call, exact torch.Tensor or Parameter arguments with no torch-function mode active, and return
// NotImplemented otherwise; the caller then takes the general path through torch.ops, which handles
// tensor subclasses and __torch_function__ and words the errors for malformed arguments. Under
// torch.compile the caller never comes here: Dynamo traces the general path.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "autograd/common.h"
#include "common/dtype.h"
#include "cpu/isa.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Shape = c10::SmallVector<c10::SymInt, 4>;

using norm_ext::autograd::op_handle;

// Argument readers: each returns false where the object is not the plain form, and the call declines.
bool read(PyObject* o, const Tensor*& out) {
  if (!THPVariable_CheckExact(o)) return false;
  out = &THPVariable_Unpack(o);
  return true;
}

bool read(PyObject* o, OptTensor& out) {
  if (o == Py_None) {
    out = std::nullopt;
    return true;
  }
  if (!THPVariable_CheckExact(o)) return false;
  out = THPVariable_Unpack(o);
  return true;
}

bool read(PyObject* o, bool& out) {
  out = o == Py_True;
  return o == Py_True || o == Py_False;
}

bool read(PyObject* o, int64_t& out) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(o, &overflow);
  return overflow == 0 && !(out == -1 && PyErr_Occurred());
}

bool read(PyObject* o, double& out) {
  if (PyFloat_CheckExact(o)) {
    out = PyFloat_AS_DOUBLE(o);
    return true;
  }
  int64_t i = 0;
  if (!read(o, i)) return false;
  out = static_cast<double>(i);
  return true;
}

// normalized_shape: an int, or a tuple (torch.Size included) or list of ints.
bool read(PyObject* o, Shape& out) {
  int64_t size = 0;
  if (read(o, size)) {
    out.assign(1, c10::SymInt(size));
    return true;
  }
  if (!PyTuple_Check(o) && !PyList_Check(o)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
  PyObject** items = PySequence_Fast_ITEMS(o);
  out.clear();
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!read(items[i], size)) return false;
    out.emplace_back(size);
  }
  return true;
}

// residual_dtype: None or a torch.dtype.
bool read(PyObject* o, std::optional<at::ScalarType>& out) {
  if (o == Py_None) {
    out = std::nullopt;
    return true;
  }
  if (!THPDtype_Check(o)) return false;
  out = reinterpret_cast<THPDtype*>(o)->scalar_type;
  return true;
}

// rms_norm's eps: None means torch's default, the machine epsilon of the normalized tensor's dtype.
bool read_rms_eps(PyObject* o, at::ScalarType dtype, double& out) {
  if (o != Py_None) return read(o, out);
  switch (dtype) {
    case at::kFloat:
      out = std::numeric_limits<float>::epsilon();
      return true;
    case at::kDouble:
      out = std::numeric_limits<double>::epsilon();
      return true;
    case at::kHalf:
      out = std::numeric_limits<c10::Half>::epsilon();
      return true;
    case at::kBFloat16:
      out = std::numeric_limits<c10::BFloat16>::epsilon();
      return true;
    default:
      return false;
  }
}

// Reads args[i] into each of outs in order; false if the count differs or one is not plain.
template <typename... Outs>
bool read_args(PyObject* const* args, Py_ssize_t nargs, Outs&... outs) {
  if (nargs != static_cast<Py_ssize_t>(sizeof...(Outs)) || at::impl::torch_function_mode_enabled()) return false;
  Py_ssize_t i = 0;
  return (read(args[i++], outs) && ...);
}

// Runs the op without the GIL, as torch's own bindings do, and hands its first output to Python.
template <typename Call>
PyObject* call_and_wrap_first(Call&& call) {
  Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = std::get<0>(call());
  }
  return THPVariable_Wrap(std::move(out));
}

PyObject* layer_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor* input = nullptr;
  Shape shape;
  OptTensor weight, bias;
  double eps = 0;
  bool zero_centered = false, memory_efficient = false;
  if (!read_args(args, nargs, input, shape, weight, bias, eps, zero_centered, memory_efficient)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto op =
      op_handle<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, c10::SymIntArrayRef, const OptTensor&,
                                                   const OptTensor&, double, bool, bool)>("norm_ext::layer_norm");
  return call_and_wrap_first(
      [&] { return op.call(*input, shape, weight, bias, eps, zero_centered, memory_efficient); });
  END_HANDLE_TH_ERRORS
}

PyObject* rms_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor* input = nullptr;
  Shape shape;
  OptTensor weight;
  double eps = 0;
  bool zero_centered = false, memory_efficient = false;
  if (nargs != 6 || !read_args(args, 3, input, shape, weight) || !read_rms_eps(args[3], input->scalar_type(), eps) ||
      !read(args[4], zero_centered) || !read(args[5], memory_efficient)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto op =
      op_handle<std::tuple<Tensor, Tensor>(const Tensor&, c10::SymIntArrayRef, const OptTensor&, double, bool, bool)>(
          "norm_ext::rms_norm");
  return call_and_wrap_first([&] { return op.call(*input, shape, weight, eps, zero_centered, memory_efficient); });
  END_HANDLE_TH_ERRORS
}

const auto& group_norm_op() {
  static const auto op =
      op_handle<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, int64_t, const OptTensor&, const OptTensor&, double,
                                                   std::optional<c10::string_view>)>("norm_ext::group_norm");
  return op;
}

// Runs the op without the GIL and hands its first two outputs (out and h of the fused ops) to Python.
template <typename Call>
PyObject* call_and_wrap_first_two(Call&& call) {
  Tensor out, h;
  {
    pybind11::gil_scoped_release no_gil;
    auto result = call();
    out = std::move(std::get<0>(result));
    h = std::move(std::get<1>(result));
  }
  PyObject* pair = PyTuple_New(2);
  if (pair == nullptr) return nullptr;
  PyTuple_SET_ITEM(pair, 0, THPVariable_Wrap(std::move(out)));
  PyTuple_SET_ITEM(pair, 1, THPVariable_Wrap(std::move(h)));
  return pair;
}

PyObject* add_layer_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *input = nullptr, *residual = nullptr;
  Shape shape;
  OptTensor weight, bias;
  double eps = 0;
  std::optional<at::ScalarType> residual_dtype;
  bool zero_centered = false, memory_efficient = false;
  if (!read_args(args, nargs, input, residual, shape, weight, bias, eps, residual_dtype, zero_centered,
                 memory_efficient)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto op = op_handle<std::tuple<Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, c10::SymIntArrayRef, const OptTensor&, const OptTensor&, double,
      std::optional<at::ScalarType>, bool, bool)>("norm_ext::add_layer_norm");
  return call_and_wrap_first_two([&] {
    return op.call(*input, *residual, shape, weight, bias, eps, residual_dtype, zero_centered, memory_efficient);
  });
  END_HANDLE_TH_ERRORS
}

PyObject* add_rms_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *input = nullptr, *residual = nullptr;
  Shape shape;
  OptTensor weight;
  double eps = 0;
  std::optional<at::ScalarType> residual_dtype;
  bool zero_centered = false, memory_efficient = false;
  // eps (args[4]) is read last: its default follows h's dtype, residual_dtype or the residual's.
  if (nargs != 8 || !read_args(args, 4, input, residual, shape, weight) || !read(args[5], residual_dtype) ||
      !read_rms_eps(args[4], residual_dtype.value_or(residual->scalar_type()), eps) || !read(args[6], zero_centered) ||
      !read(args[7], memory_efficient)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto op =
      op_handle<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, c10::SymIntArrayRef, const OptTensor&,
                                                   double, std::optional<at::ScalarType>, bool, bool)>(
          "norm_ext::add_rms_norm");
  return call_and_wrap_first_two(
      [&] { return op.call(*input, *residual, shape, weight, eps, residual_dtype, zero_centered, memory_efficient); });
  END_HANDLE_TH_ERRORS
}

// weight_norm(v, g, dim), dim an int (negative counts from the end) or None. A dim out of range
// declines: Python words that error.
PyObject* weight_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *v = nullptr, *g = nullptr;
  std::optional<int64_t> dim;
  int64_t d = 0;
  if (nargs != 3 || !read_args(args, 2, v, g)) Py_RETURN_NOTIMPLEMENTED;
  if (args[2] != Py_None) {
    if (!read(args[2], d) || d < -v->dim() || d >= v->dim()) Py_RETURN_NOTIMPLEMENTED;
    dim = d < 0 ? d + v->dim() : d;
  }
  static const auto op = op_handle<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, std::optional<int64_t>)>(
      "norm_ext::weight_norm");
  return call_and_wrap_first([&] { return op.call(*v, *g, dim); });
  END_HANDLE_TH_ERRORS
}

// group_norm without an activation (the activation's name is checked in Python).
PyObject* group_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor* input = nullptr;
  int64_t num_groups = 0;
  OptTensor weight, bias;
  double eps = 0;
  if (!read_args(args, nargs, input, num_groups, weight, bias, eps)) Py_RETURN_NOTIMPLEMENTED;
  return call_and_wrap_first([&] { return group_norm_op().call(*input, num_groups, weight, bias, eps, std::nullopt); });
  END_HANDLE_TH_ERRORS
}

// instance_norm by the input's own statistics with no running statistics to update (the modules'
// default): GroupNorm with one group per channel. An input with one value per instance declines
// (Python words that error), as does a momentum out of range.
PyObject* instance_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor* input = nullptr;
  OptTensor weight, bias;
  double momentum = 0, eps = 0;
  if (!read_args(args, nargs, input, weight, bias, momentum, eps) || input->dim() < 3 ||
      input->numel() <= input->size(0) * input->size(1) || !(momentum >= 0.0 && momentum <= 1.0)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  return call_and_wrap_first(
      [&] { return group_norm_op().call(*input, input->size(1), weight, bias, eps, std::nullopt); });
  END_HANDLE_TH_ERRORS
}

// 1 / sqrt(running_var + eps) in the accumulation dtype. On the CPU a loop over the channels:
// var.add(eps) alone runs a TensorIterator that type-promotes the scalar through a copy, which cost
// eval-mode BatchNorm more host time than the normalization. The loop's output is allocated below
// the dispatcher, so that under a torch.func transform (whose wrappers hold no storage) it is a
// constant, as a buffer would be.
Tensor eval_invstd(const Tensor& running_var, double eps, at::ScalarType acc) {
  if (!running_var.is_cpu() || !running_var.has_storage() || running_var.scalar_type() != acc ||
      !running_var.is_contiguous()) {
    return norm_ext::as_dtype(running_var, acc).add(eps).rsqrt_();
  }
  Tensor invstd = at::detail::empty_cpu(running_var.sizes(), acc, /*pin_memory=*/false, std::nullopt);
  AT_DISPATCH_FLOATING_TYPES(acc, "norm_ext_eval_invstd", [&] {
    const scalar_t* var = running_var.const_data_ptr<scalar_t>();
    scalar_t* out = invstd.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < running_var.numel(); ++c) {
      out[c] = scalar_t(1) / std::sqrt(var[c] + static_cast<scalar_t>(eps));
    }
  });
  return invstd;
}

// norm_ext.functional's batch norm without padding or a process group: in training the op that also
// updates the running statistics, in eval the normalization by them. The calls Python words an
// error for (a single value per channel, missing or misshapen running statistics in eval, momentum
// out of range) and a tensor momentum (the modules' cumulative average) decline.
PyObject* batch_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor* input = nullptr;
  OptTensor running_mean, running_var, weight, bias;
  bool training = false;
  double momentum = 0, eps = 0;
  if (!read_args(args, nargs, input, running_mean, running_var, weight, bias, training, momentum, eps) ||
      input->dim() < 2 || !(momentum >= 0.0 && momentum <= 1.0) || !(eps >= 0.0)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  if (training) {
    if (input->numel() == input->size(1)) Py_RETURN_NOTIMPLEMENTED;
    static const auto op = op_handle<std::tuple<Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const OptTensor&, const OptTensor&, double, const OptTensor&, const OptTensor&, double)>(
        "norm_ext::batch_norm_train");
    return call_and_wrap_first([&] { return op.call(*input, weight, bias, eps, running_mean, running_var, momentum); });
  }
  // batch_norm_elemt would name the statistics it is given, not the running statistics they come from.
  const auto per_channel = [&](const OptTensor& t) {
    return t.has_value() && t->dim() == 1 && t->size(0) == input->size(1);
  };
  if (!per_channel(running_mean) || !per_channel(running_var)) Py_RETURN_NOTIMPLEMENTED;
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                          const OptTensor&, const OptTensor&)>("norm_ext::batch_norm_elemt");
  return call_and_wrap_first([&] {
    const at::ScalarType acc = input->scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const Tensor invstd = eval_invstd(*running_var, eps, acc);
    return std::make_tuple(op.call(*input, norm_ext::as_dtype(*running_mean, acc), invstd, weight, bias, std::nullopt));
  });
  END_HANDLE_TH_ERRORS
}

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(norm_ext::cpu::isa_name(norm_ext::cpu::detect_isa()));
}

PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set of the CPU kernels: 'avx512', 'avx2' or 'default'."},
    {"layer_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(layer_norm)), METH_FASTCALL,
     "layer_norm(input, normalized_shape, weight, bias, eps, zero_centered_weight, memory_efficient) -> out, "
     "or NotImplemented"},
    {"rms_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(rms_norm)), METH_FASTCALL,
     "rms_norm(input, normalized_shape, weight, eps, zero_centered_weight, memory_efficient) -> out, "
     "or NotImplemented"},
    {"add_layer_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(add_layer_norm)), METH_FASTCALL,
     "add_layer_norm(input, residual, normalized_shape, weight, bias, eps, residual_dtype, zero_centered_weight, "
     "memory_efficient) -> (out, h), or NotImplemented"},
    {"add_rms_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(add_rms_norm)), METH_FASTCALL,
     "add_rms_norm(input, residual, normalized_shape, weight, eps, residual_dtype, zero_centered_weight, "
     "memory_efficient) -> (out, h), or NotImplemented"},
    {"weight_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(weight_norm)), METH_FASTCALL,
     "weight_norm(v, g, dim) -> w, or NotImplemented"},
    {"group_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(group_norm)), METH_FASTCALL,
     "group_norm(input, num_groups, weight, bias, eps) -> out, or NotImplemented"},
    {"instance_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(instance_norm)), METH_FASTCALL,
     "instance_norm(input, weight, bias, momentum, eps) -> out, or NotImplemented"},
    {"batch_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(batch_norm)), METH_FASTCALL,
     "batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) -> out, "
     "or NotImplemented"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, module_methods};
  return PyModule_Create(&module_def);
}
