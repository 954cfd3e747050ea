// CPU backend of PowerNorm (Shen et al. 2020) over (B, T, C) input viewed as tokens x channels; the
// checks and allocation are the shared glue of ops/power_norm.h.
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

#include "ops/power_norm.h"

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

const bool* mask_ptr(const at::Tensor& pad) {
  return pad.defined() ? pad.const_data_ptr<bool>() : nullptr;
}

struct CpuPowerNorm {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  using Guard = NoDeviceGuard;

  static void stats(const PowerNormStatsCall& c) {
    const TokenBlocks blocks = token_blocks(c.shape.tokens);
    const int64_t C = c.shape.channels;
    const bool* pad = mask_ptr(c.pad);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "power_norm_stats_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = c.input.const_data_ptr<scalar_t>();
      std::vector<acc_t> partial(blocks.count * C, acc_t(0));
      std::vector<int64_t> valid(blocks.count, 0);
      at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          acc_t* acc = partial.data() + b * C;
          const int64_t end = std::min(c.shape.tokens, (b + 1) * blocks.size);
          for (int64_t n = b * blocks.size; n < end; ++n) {
            if (pad != nullptr && pad[n]) continue;
            ++valid[b];
            const scalar_t* row = x + n * C;
            for (int64_t ch = 0; ch < C; ++ch) {
              const acc_t v = static_cast<acc_t>(row[ch]);
              acc[ch] += v * v;
            }
          }
        }
      });
      acc_t* out = c.sum_sq.mutable_data_ptr<acc_t>();
      int64_t total = 0;
      for (int64_t b = 0; b < blocks.count; ++b) {
        total += valid[b];
        for (int64_t ch = 0; ch < C; ++ch) out[ch] += partial[b * C + ch];
      }
      c.count.fill_(static_cast<double>(total));
    });
  }

  static void forward(const PowerNormFwdCall& c) {
    const int64_t C = c.shape.channels;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "power_norm_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = c.input.const_data_ptr<scalar_t>();
      scalar_t* y = c.out.mutable_data_ptr<scalar_t>();
      const acc_t* a = c.factor.const_data_ptr<acc_t>();
      const acc_t* b = c.shift.const_data_ptr<acc_t>();
      at::parallel_for(0, c.shape.tokens, std::max<int64_t>(1, kGrainElements / C), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          for (int64_t ch = 0; ch < C; ++ch) {
            y[n * C + ch] = static_cast<scalar_t>(static_cast<acc_t>(x[n * C + ch]) * a[ch] + b[ch]);
          }
        }
      });
    });
  }

  static void backward(const PowerNormBwdCall& c) {
    const TokenBlocks blocks = token_blocks(c.shape.tokens);
    const int64_t C = c.shape.channels;
    const bool* pad = mask_ptr(c.pad);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "power_norm_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = c.input.const_data_ptr<scalar_t>();
      const scalar_t* dy = c.grad_out.const_data_ptr<scalar_t>();
      scalar_t* dx = c.grad_input.mutable_data_ptr<scalar_t>();
      const acc_t* s = c.scale.const_data_ptr<acc_t>();
      const acc_t* w = c.weight.const_data_ptr<acc_t>();
      acc_t* ema = c.ema_gz.mutable_data_ptr<acc_t>();
      std::vector<acc_t> correction(C);
      for (int64_t ch = 0; ch < C; ++ch) correction[ch] = (acc_t(1) - static_cast<acc_t>(c.alpha_bkw)) * ema[ch];
      // Three partial rows per block, over the valid tokens only (a padding token's x may be NaN, and
      // 0 * NaN is NaN): sum of (corrected grad * z), dweight, dbias.
      std::vector<acc_t> partial(blocks.count * 3 * C, acc_t(0));
      std::vector<int64_t> valid(blocks.count, 0);
      at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          acc_t* gamma = partial.data() + b * 3 * C;
          acc_t* dw = gamma + C;
          acc_t* db = dw + C;
          const int64_t end = std::min(c.shape.tokens, (b + 1) * blocks.size);
          for (int64_t n = b * blocks.size; n < end; ++n) {
            const bool is_valid = pad == nullptr || !pad[n];
            valid[b] += is_valid ? 1 : 0;
            for (int64_t ch = 0; ch < C; ++ch) {
              const int64_t i = n * C + ch;
              const acc_t z = static_cast<acc_t>(x[i]) * s[ch];
              const acc_t g_out = static_cast<acc_t>(dy[i]);
              const acc_t approx = g_out * w[ch] - correction[ch] * z;
              dx[i] = static_cast<scalar_t>(approx * s[ch]);
              if (!is_valid) continue;
              dw[ch] += g_out * z;
              db[ch] += g_out;
              gamma[ch] += approx * z;
            }
          }
        }
      });
      int64_t total = 0;
      std::vector<acc_t> gamma_sum(C, acc_t(0));
      acc_t* gw = c.grad_weight.mutable_data_ptr<acc_t>();
      acc_t* gb = c.grad_bias.mutable_data_ptr<acc_t>();
      for (int64_t b = 0; b < blocks.count; ++b) {
        total += valid[b];
        const acc_t* row = partial.data() + b * 3 * C;
        for (int64_t ch = 0; ch < C; ++ch) {
          gamma_sum[ch] += row[ch];
          gw[ch] += row[C + ch];
          gb[ch] += row[2 * C + ch];
        }
      }
      if (total > 0) {
        for (int64_t ch = 0; ch < C; ++ch) ema[ch] += gamma_sum[ch] / static_cast<acc_t>(total);
      }
    });
  }
};

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_power_norm_ops<norm_ext::CpuPowerNorm>(m);
}
