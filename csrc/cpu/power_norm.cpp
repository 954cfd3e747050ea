// CPU kernels of PowerNorm (Shen et al. 2020) over (B, T, C) input viewed as tokens x channels.
//
// Per-channel reductions (sum of squares, the backward's running-Gamma term, dweight, dbias) split
// the tokens into blocks whose size depends only on the token count; each block writes a row of
// partials and the rows are summed in block order, so results do not depend on the thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/reparam_checks.h"

namespace norm_ext {
namespace {

constexpr int64_t kMinTokensPerBlock = 64;
constexpr int64_t kMaxBlocks = 256;
constexpr int64_t kGrainElements = 1 << 15;

struct TokenBlocks {
  int64_t size;
  int64_t count;
};

TokenBlocks token_blocks(int64_t tokens) {
  const int64_t size = std::max(kMinTokensPerBlock, (tokens + kMaxBlocks - 1) / kMaxBlocks);
  return {size, (tokens + size - 1) / size};
}

const bool* mask_ptr(const std::optional<at::Tensor>& pad_mask, at::Tensor& holder) {
  if (!pad_mask.has_value() || !pad_mask->defined()) return nullptr;
  holder = pad_mask->contiguous();
  return holder.const_data_ptr<bool>();
}

at::Tensor param_as_acc(const std::optional<at::Tensor>& p, at::ScalarType acc, int64_t channels, double fill,
                        const at::Tensor& like) {
  if (p.has_value() && p->defined()) return p->to(acc).contiguous();
  return at::full({channels}, fill, like.options().dtype(acc));
}

std::tuple<at::Tensor, at::Tensor> power_norm_stats_cpu(const at::Tensor& input_in,
                                                        const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "norm_ext::power_norm_stats";
  const TokenShape shape = check_power_norm_input(op, input_in, pad_mask);
  TORCH_CHECK(input_in.device().is_cpu(), op, ": expected CPU tensors, got input on ", input_in.device());
  const at::Tensor input = input_in.contiguous();
  const auto acc_type = acc_dtype_of(input);
  at::Tensor sum_sq = at::zeros({shape.channels}, input.options().dtype(acc_type));
  at::Tensor count = at::zeros({}, input.options().dtype(acc_type));
  if (shape.tokens == 0 || shape.channels == 0) return {sum_sq, count};
  at::Tensor mask_holder;
  const bool* pad = mask_ptr(pad_mask, mask_holder);
  const TokenBlocks blocks = token_blocks(shape.tokens);
  const int64_t C = shape.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "power_norm_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    std::vector<acc_t> partial(blocks.count * C, acc_t(0));
    std::vector<int64_t> valid(blocks.count, 0);
    at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        acc_t* acc = partial.data() + b * C;
        const int64_t end = std::min(shape.tokens, (b + 1) * blocks.size);
        for (int64_t n = b * blocks.size; n < end; ++n) {
          if (pad != nullptr && pad[n]) continue;
          ++valid[b];
          const scalar_t* row = x + n * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t v = static_cast<acc_t>(row[c]);
            acc[c] += v * v;
          }
        }
      }
    });
    acc_t* out = sum_sq.data_ptr<acc_t>();
    int64_t total = 0;
    for (int64_t b = 0; b < blocks.count; ++b) {
      total += valid[b];
      for (int64_t c = 0; c < C; ++c) out[c] += partial[b * C + c];
    }
    count.fill_(static_cast<double>(total));
  });
  return {sum_sq, count};
}

at::Tensor power_norm_cpu(const at::Tensor& input_in, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& ema_gz,
                          const std::optional<at::Tensor>& pad_mask, double alpha_bkw) {
  constexpr const char* op = "norm_ext::power_norm";
  const TokenShape shape = check_power_norm_input(op, input_in, pad_mask);
  check_power_norm_params(op, input_in, scale, weight, bias, ema_gz);
  TORCH_CHECK(input_in.device().is_cpu(), op, ": expected CPU tensors, got input on ", input_in.device());
  const at::Tensor input = input_in.contiguous();
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) return out;
  const auto acc_type = acc_dtype_of(input);
  const int64_t C = shape.channels;
  // y = x * (scale * weight) + bias: fold the per-channel factors once.
  const at::Tensor factor = (scale * param_as_acc(weight, acc_type, C, 1.0, input)).contiguous();
  const at::Tensor shift = param_as_acc(bias, acc_type, C, 0.0, input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "power_norm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const acc_t* a = factor.const_data_ptr<acc_t>();
    const acc_t* b = shift.const_data_ptr<acc_t>();
    at::parallel_for(0, shape.tokens, std::max<int64_t>(1, kGrainElements / C), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          y[n * C + c] = static_cast<scalar_t>(static_cast<acc_t>(x[n * C + c]) * a[c] + b[c]);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_norm_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const at::Tensor& scale,
    const std::optional<at::Tensor>& weight, at::Tensor& ema_gz, const std::optional<at::Tensor>& pad_mask,
    double alpha_bkw, bool has_bias) {
  constexpr const char* op = "norm_ext::power_norm_backward";
  const TokenShape shape = check_power_norm_input(op, input_in, pad_mask);
  check_power_norm_params(op, input_in, scale, weight, std::nullopt, ema_gz);
  TORCH_CHECK(input_in.device().is_cpu(), op, ": expected CPU tensors, got input on ", input_in.device());
  check_same_device(op, "grad_out", grad_out_in, input_in);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == input_in.sizes(), op, ": grad_out has shape ", grad_out_in.sizes(),
                    " but input has shape ", input_in.sizes());
  TORCH_CHECK_TYPE(grad_out_in.scalar_type() == input_in.scalar_type(), op, ": grad_out dtype ",
                   grad_out_in.scalar_type(), " differs from input dtype ", input_in.scalar_type());
  TORCH_CHECK_VALUE(ema_gz.is_contiguous(), op, ": ema_gz must be contiguous");
  const at::Tensor input = input_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const auto acc_type = acc_dtype_of(input);
  const int64_t C = shape.channels;
  at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  const bool has_weight = weight.has_value() && weight->defined();
  at::Tensor grad_weight_acc = at::zeros({C}, input.options().dtype(acc_type));
  at::Tensor grad_bias_acc = at::zeros({C}, input.options().dtype(acc_type));
  const auto param_type = has_weight ? weight->scalar_type() : input.scalar_type();
  const auto finish = [&]() -> std::tuple<at::Tensor, at::Tensor, at::Tensor> {
    at::Tensor gw = has_weight ? grad_weight_acc.to(param_type) : input.new_empty({0});
    at::Tensor gb = has_bias ? grad_bias_acc.to(param_type) : input.new_empty({0});
    return {grad_input, gw, gb};
  };
  if (input.numel() == 0) return finish();
  at::Tensor mask_holder;
  const bool* pad = mask_ptr(pad_mask, mask_holder);
  const at::Tensor w_acc = param_as_acc(weight, acc_type, C, 1.0, input);
  const TokenBlocks blocks = token_blocks(shape.tokens);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "power_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* dy = grad_out.const_data_ptr<scalar_t>();
    scalar_t* dx = grad_input.mutable_data_ptr<scalar_t>();
    const acc_t* s = scale.const_data_ptr<acc_t>();
    const acc_t* w = w_acc.const_data_ptr<acc_t>();
    acc_t* ema = ema_gz.data_ptr<acc_t>();
    std::vector<acc_t> correction(C);
    for (int64_t c = 0; c < C; ++c) correction[c] = (acc_t(1) - static_cast<acc_t>(alpha_bkw)) * ema[c];
    // Three partial rows per block: sum of (corrected grad * z) over valid tokens, dweight, dbias.
    std::vector<acc_t> partial(blocks.count * 3 * C, acc_t(0));
    std::vector<int64_t> valid(blocks.count, 0);
    at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        acc_t* gamma = partial.data() + b * 3 * C;
        acc_t* dw = gamma + C;
        acc_t* db = dw + C;
        const int64_t end = std::min(shape.tokens, (b + 1) * blocks.size);
        for (int64_t n = b * blocks.size; n < end; ++n) {
          const bool is_valid = pad == nullptr || !pad[n];
          valid[b] += is_valid ? 1 : 0;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t i = n * C + c;
            const acc_t z = static_cast<acc_t>(x[i]) * s[c];
            const acc_t g_out = static_cast<acc_t>(dy[i]);
            const acc_t approx = g_out * w[c] - correction[c] * z;
            dx[i] = static_cast<scalar_t>(approx * s[c]);
            dw[c] += g_out * z;
            db[c] += g_out;
            if (is_valid) gamma[c] += approx * z;
          }
        }
      }
    });
    int64_t total = 0;
    std::vector<acc_t> gamma_sum(C, acc_t(0));
    acc_t* gw = grad_weight_acc.data_ptr<acc_t>();
    acc_t* gb = grad_bias_acc.data_ptr<acc_t>();
    for (int64_t b = 0; b < blocks.count; ++b) {
      total += valid[b];
      const acc_t* row = partial.data() + b * 3 * C;
      for (int64_t c = 0; c < C; ++c) {
        gamma_sum[c] += row[c];
        gw[c] += row[C + c];
        gb[c] += row[2 * C + c];
      }
    }
    if (total > 0) {
      for (int64_t c = 0; c < C; ++c) ema[c] += gamma_sum[c] / static_cast<acc_t>(total);
    }
  });
  return finish();
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  m.impl("power_norm_stats", &norm_ext::power_norm_stats_cpu);
  m.impl("power_norm", &norm_ext::power_norm_cpu);
  m.impl("power_norm_backward", &norm_ext::power_norm_backward_cpu);
}
