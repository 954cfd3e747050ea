#pragma once
// GPU backend of the row-norm family: turns the plan of plans/row_norm.h into launches of the kernels
// of row_norm_kernels.cuh, behind the shared op glue of ops/row_norm.h. Included by
// cuda/layer_norm.cu (CUDA) and simt/row_norm.cpp (the SIMT host build).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <type_traits>

#include "cuda/launch.h"
#include "cuda/row_norm_kernels.cuh"
#include "ops/row_norm.h"
#include "plans/row_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

template <typename in_t, int kV>
bool params_aligned(const AffineParams& p) {
  const auto ok = [&](const void* ptr) {
    return p.is_float ? is_aligned<kV * sizeof(float)>(ptr) : is_aligned<kV * sizeof(in_t)>(ptr);
  };
  return ok(p.weight) && ok(p.bias);
}

// How many clusters of the cluster kernel fit, for the plans; none for misaligned rows (kV = 1),
// which never take the cluster path, so that no kV = 1 cluster kernel is instantiated.
template <int kV, typename Kernel>
plans::MaxClustersFn cluster_query(Kernel kernel) {
  if constexpr (kV > 1) {
    return [kernel](int blocks, int threads) {
      return max_active_clusters(reinterpret_cast<const void*>(kernel), blocks, threads);
    };
  } else {
    return [](int, int) { return 0; };
  }
}

template <typename in_t, typename h_t, int kV>
void launch_row_norm_fwd_vec(const RowNormFwdArgs<in_t, h_t>& a, Stream stream) {
  const auto cluster_kernel = [] {
    if constexpr (kV > 1) {
      return row_norm_fwd_cluster<in_t, h_t, kV>;
    } else {
      return nullptr;
    }
  }();
  const plans::RowNormFwdPlan plan =
      plans::plan_row_norm_fwd(a.rows, a.cols, kV, device_props(), cluster_query<kV>(cluster_kernel));
  const plans::LaunchShape shape = launch_shape(plan.grid, plan.threads, 0, plan.cluster);
  switch (plan.path) {
    case plans::RowPath::kWarp:
    case plans::RowPath::kBlock:
      switch (plan.vecs_per_thread) {
        case 1:
          return launch(row_norm_fwd_reg<in_t, h_t, 1, kV>, shape, stream, a, plan.threads_per_row);
        case 2:
          return launch(row_norm_fwd_reg<in_t, h_t, 2, kV>, shape, stream, a, plan.threads_per_row);
        case plans::kRowWarpModeMaxVecs:
          return launch(row_norm_fwd_reg<in_t, h_t, plans::kRowWarpModeMaxVecs, kV>, shape, stream, a,
                        plan.threads_per_row);
        default:
          return launch(row_norm_fwd_reg<in_t, h_t, kRowFwdMaxVecs, kV>, shape, stream, a, plan.threads_per_row);
      }
    case plans::RowPath::kCluster:
      if constexpr (kV > 1) launch(cluster_kernel, shape, stream, a);
      return;
    case plans::RowPath::kStream:
      return launch(row_norm_fwd_stream<in_t, h_t, kV>, shape, stream, a);
  }
}

template <typename in_t, typename h_t>
void launch_row_norm_fwd(const RowNormFwdArgs<in_t, h_t>& a, Stream stream) {
  constexpr int kV = vec_width_128<in_t>();
  const bool vectorized = a.cols % kV == 0 && is_aligned<kV * sizeof(in_t)>(a.x) &&
                          is_aligned<kV * sizeof(in_t)>(a.y) && is_aligned<kV * sizeof(h_t)>(a.residual) &&
                          is_aligned<kV * sizeof(h_t)>(a.residual_out) && params_aligned<in_t, kV>(a.affine);
  if (vectorized) {
    launch_row_norm_fwd_vec<in_t, h_t, kV>(a, stream);
  } else {
    launch_row_norm_fwd_vec<in_t, h_t, 1>(a, stream);
  }
}

// One partial row per block (or cluster, or row chunk) of dgamma or dbeta, when that grad is wanted.
inline at::Tensor make_param_grad_partial(const at::Tensor& grad, int64_t num_partials, int64_t cols,
                                          const at::TensorOptions& acc_opts) {
  return grad.defined() ? at::empty({num_partials, cols}, acc_opts) : at::Tensor();
}

template <typename acc_t>
acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<acc_t>() : nullptr;
}

template <typename acc_t>
void reduce_partials_into(const at::Tensor& partial, const at::Tensor& out, Stream stream) {
  if (!partial.defined()) return;
  const int64_t num_partials = partial.size(0);
  const int64_t cols = partial.size(1);
  const plans::LaunchShape shape =
      launch_shape({std::min(ceil_div(cols, kRowReduceCols), device_props().max_grid[0]), 1, 1},
                   {kRowReduceCols, kRowReduceSplits, 1});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "norm_ext_reduce_partials", [&] {
    launch(reduce_param_grad_partials<acc_t, scalar_t>, shape, stream, partial.const_data_ptr<acc_t>(), num_partials,
           cols, out.mutable_data_ptr<scalar_t>());
  });
}

template <typename in_t, typename saved_t, int kV>
void launch_row_norm_bwd_vec(const RowNormBwdArgs<in_t, saved_t>& a, const at::Tensor& grad_weight,
                             const at::Tensor& grad_bias, const at::TensorOptions& acc_opts, Stream stream) {
  using acc_t = at::opmath_type<in_t>;
  const auto reg_kernel = [](int vecs) {
    return vecs == 1 ? row_norm_bwd_reg<in_t, saved_t, 1, kV> : row_norm_bwd_reg<in_t, saved_t, kRowBwdMaxVecs, kV>;
  };
  const auto cluster_kernel = [] {
    if constexpr (kV > 1) {
      return row_norm_bwd_cluster<in_t, saved_t, kV>;
    } else {
      return nullptr;
    }
  }();
  const plans::RowNormBwdPlan plan = plans::plan_row_norm_bwd(
      a.rows, a.cols, kV, sizeof(acc_t), device_props(),
      [&](int vecs, int threads, int64_t smem) {
        return max_active_blocks_per_sm(reinterpret_cast<const void*>(reg_kernel(vecs)), threads, smem);
      },
      cluster_query<kV>(cluster_kernel));
  const at::Tensor dw_partial = make_param_grad_partial(grad_weight, plan.partials, a.cols, acc_opts);
  const at::Tensor db_partial = make_param_grad_partial(grad_bias, plan.partials, a.cols, acc_opts);
  acc_t* dw = data_or_null<acc_t>(dw_partial);
  acc_t* db = data_or_null<acc_t>(db_partial);
  switch (plan.path) {
    case plans::RowPath::kWarp:
    case plans::RowPath::kBlock:
      launch(reg_kernel(plan.vecs_per_thread), launch_shape(plan.grid, plan.threads, plan.smem), stream, a,
             plan.threads_per_row, dw, db);
      break;
    case plans::RowPath::kCluster:
      if constexpr (kV > 1)
        launch(cluster_kernel, launch_shape(plan.grid, plan.threads, 0, plan.cluster), stream, a, dw, db);
      break;
    case plans::RowPath::kStream: {
      const at::Tensor row_means = at::empty({a.rows, 2}, acc_opts);
      launch(row_norm_bwd_row_sums<in_t, saved_t, kV>, launch_shape(plan.grid, plan.threads), stream, a,
             row_means.mutable_data_ptr<acc_t>());
      launch(row_norm_bwd_stream<in_t, saved_t, kV>,
             launch_shape({plan.col_tiles, plan.row_chunks, 1}, {plan.threads, 1, 1}), stream, a,
             row_means.const_data_ptr<acc_t>(), dw, db);
      break;
    }
  }
  reduce_partials_into<acc_t>(dw_partial, grad_weight, stream);
  reduce_partials_into<acc_t>(db_partial, grad_bias, stream);
}

template <typename in_t, typename saved_t>
void launch_row_norm_bwd(const RowNormBwdArgs<in_t, saved_t>& a, const at::Tensor& grad_weight,
                         const at::Tensor& grad_bias, const at::TensorOptions& acc_opts, Stream stream) {
  constexpr int kV = vec_width_128<in_t>();
  const bool vectorized = a.cols % kV == 0 && is_aligned<kV * sizeof(in_t)>(a.dy) &&
                          is_aligned<kV * sizeof(saved_t)>(a.saved) && is_aligned<kV * sizeof(saved_t)>(a.dx) &&
                          is_aligned<kV * sizeof(saved_t)>(a.grad_residual) && params_aligned<in_t, kV>(a.affine);
  if (vectorized) {
    launch_row_norm_bwd_vec<in_t, saved_t, kV>(a, grad_weight, grad_bias, acc_opts, stream);
  } else {
    launch_row_norm_bwd_vec<in_t, saved_t, 1>(a, grad_weight, grad_bias, acc_opts, stream);
  }
}

template <typename in_t>
constexpr bool is_reduced_float() {
  return std::is_same_v<in_t, at::Half> || std::is_same_v<in_t, at::BFloat16>;
}

// Calls run(in_t{}, stream_t{}) with in_t the dtype `dtype` names and stream_t that of the residual
// stream h or of the saved tensor: the input's dtype, or float32 for half / bf16 input. The
// discarded branch is not instantiated.
template <typename Run>
void dispatch_row_norm(at::ScalarType dtype, at::ScalarType stream_dtype, const Run& run) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "norm_ext_row_norm", [&] {
    using in_t = scalar_t;
    if constexpr (is_reduced_float<in_t>()) {
      if (stream_dtype == at::kFloat) return run(in_t{}, float{});
    }
    run(in_t{}, in_t{});
  });
}

// weight and bias share a dtype (checked), so either one tells whether they are float32.
inline AffineParams make_affine(const at::Tensor& w, const at::Tensor& b, at::ScalarType input_dtype,
                                bool zero_centered) {
  const at::Tensor& any = w.defined() ? w : b;
  const bool is_float = any.defined() && any.scalar_type() == at::kFloat && input_dtype != at::kFloat;
  return {w.defined() ? w.const_data_ptr() : nullptr, b.defined() ? b.const_data_ptr() : nullptr, is_float,
          zero_centered};
}

struct GpuRowNorm {
  static constexpr c10::DeviceType kDevice = kGpuDeviceType;
  using Guard = DeviceGuard;

  static void forward(const RowNormFwdCall& c) {
    const Stream stream = current_stream();
    const at::ScalarType h_dtype = c.residual.defined() ? c.residual.scalar_type() : c.input.scalar_type();
    dispatch_row_norm(c.input.scalar_type(), h_dtype, [&](auto in_tag, auto h_tag) {
      using in_t = decltype(in_tag);
      using h_t = decltype(h_tag);
      using acc_t = at::opmath_type<in_t>;
      const RowNormFwdArgs<in_t, h_t> args{c.input.const_data_ptr<in_t>(),
                                           c.residual.defined() ? c.residual.const_data_ptr<h_t>() : nullptr,
                                           c.residual_out.defined() ? c.residual_out.mutable_data_ptr<h_t>() : nullptr,
                                           c.out.mutable_data_ptr<in_t>(),
                                           c.mean.defined() ? c.mean.mutable_data_ptr<acc_t>() : nullptr,
                                           c.rstd.mutable_data_ptr<acc_t>(),
                                           make_affine(c.weight, c.bias, c.input.scalar_type(), c.zero_centered),
                                           c.shape.rows,
                                           c.shape.cols,
                                           static_cast<acc_t>(c.eps),
                                           c.rms};
      launch_row_norm_fwd<in_t, h_t>(args, stream);
    });
  }

  static void backward(const RowNormBwdCall& c) {
    const Stream stream = current_stream();
    const at::ScalarType acc = stat_dtype(c.grad_out.scalar_type());
    dispatch_row_norm(c.grad_out.scalar_type(), c.saved.scalar_type(), [&](auto in_tag, auto saved_tag) {
      using in_t = decltype(in_tag);
      using saved_t = decltype(saved_tag);
      using acc_t = at::opmath_type<in_t>;
      const RowNormBwdArgs<in_t, saved_t> args{
          c.grad_out.const_data_ptr<in_t>(),
          c.saved.const_data_ptr<saved_t>(),
          c.grad_residual.defined() ? c.grad_residual.const_data_ptr<saved_t>() : nullptr,
          c.grad_input.mutable_data_ptr<saved_t>(),
          c.mean.defined() ? c.mean.const_data_ptr<acc_t>() : nullptr,
          c.rstd.const_data_ptr<acc_t>(),
          make_affine(c.weight, c.bias, c.grad_out.scalar_type(), c.zero_centered),
          c.shape.rows,
          c.shape.cols,
          c.rms,
          c.saved_is_output};
      launch_row_norm_bwd<in_t, saved_t>(args, c.grad_weight, c.grad_bias, c.grad_out.options().dtype(acc), stream);
    });
  }
};

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
