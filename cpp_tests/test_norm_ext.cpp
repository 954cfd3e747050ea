// C++ tests run by ctest: the Welford/Chan merge against a two-pass reference, and the ops called
// through torch::Dispatcher as a libtorch user would, against float64 formulas.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "common/welford.h"

namespace {

int failures = 0;

void expect_near(double actual, double expected, double tol, const char* what) {
  if (!(std::abs(actual - expected) <= tol * std::max(1.0, std::abs(expected)))) {
    std::printf("FAIL %s: got %.12g, expected %.12g\n", what, actual, expected);
    ++failures;
  }
}

void two_pass(const std::vector<double>& x, double& mean, double& m2) {
  mean = 0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  m2 = 0;
  for (double v : x) m2 += (v - mean) * (v - mean);
}

void test_welford_merge() {
  std::mt19937 gen(0);
  std::normal_distribution<double> noise(0.0, 1e-2);
  std::vector<double> x(10007);
  for (double& v : x) v = 1e4 + noise(gen);
  double ref_mean, ref_m2;
  two_pass(x, ref_mean, ref_m2);

  // Uneven partitions, one of them empty, merged pairwise in float32 and float64.
  const std::vector<size_t> cuts = {0, 1, 1, 700, 5000, 10007};
  std::vector<norm_ext::WelfordState<double>> parts64;
  std::vector<norm_ext::WelfordState<float>> parts32;
  for (size_t p = 0; p + 1 < cuts.size(); ++p) {
    auto s64 = norm_ext::welford_init<double>();
    auto s32 = norm_ext::welford_init<float>();
    for (size_t i = cuts[p]; i < cuts[p + 1]; ++i) {
      norm_ext::welford_update(s64, x[i]);
      norm_ext::welford_update(s32, static_cast<float>(x[i]));
    }
    parts64.push_back(s64);
    parts32.push_back(s32);
  }
  auto total64 = norm_ext::welford_init<double>();
  auto total32 = norm_ext::welford_init<float>();
  for (size_t p = 0; p < parts64.size(); ++p) {
    total64 = norm_ext::welford_merge(total64, parts64[p]);
    total32 = norm_ext::welford_merge(total32, parts32[p]);
  }
  expect_near(total64.count, 10007, 0, "welford count");
  expect_near(total64.mean, ref_mean, 1e-14, "welford fp64 mean");
  expect_near(total64.m2, ref_m2, 1e-9, "welford fp64 m2");
  // fp32: the variance keeps ~3 significant digits where E[x^2]-E[x]^2 would keep none.
  expect_near(total32.m2 / total32.count, ref_m2 / 10007, 5e-2, "welford fp32 variance");

  const auto both_empty = norm_ext::welford_merge(norm_ext::welford_init<float>(), norm_ext::welford_init<float>());
  if (std::isnan(both_empty.mean) || std::isnan(both_empty.m2)) {
    std::printf("FAIL welford merge of two empty states is NaN\n");
    ++failures;
  }
}

void test_layer_norm_through_dispatcher() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("norm_ext::layer_norm", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, c10::SymIntArrayRef, const std::optional<at::Tensor>&,
                    const std::optional<at::Tensor>&, double, bool, bool)>();
  torch::manual_seed(0);
  const auto x = torch::randn({13, 257});
  const auto w = torch::randn({257});
  const auto b = torch::randn({257});
  const std::vector<c10::SymInt> shape = {c10::SymInt(257)};
  auto [y, mean, rstd] = op.call(x, shape, w, b, 1e-5, false, false);

  const auto x64 = x.to(torch::kDouble);
  const auto mu = x64.mean(-1, true);
  const auto var = (x64 - mu).pow(2).mean(-1, true);
  const auto ref = (x64 - mu) / (var + 1e-5).sqrt() * w.to(torch::kDouble) + b.to(torch::kDouble);
  expect_near((y.to(torch::kDouble) - ref).abs().max().item<double>(), 0.0, 1e-5, "layer_norm output");
  expect_near((mean.to(torch::kDouble) - mu.squeeze(-1)).abs().max().item<double>(), 0.0, 1e-6, "layer_norm mean");
}

}  // namespace

int main() {
  test_welford_merge();
  test_layer_norm_through_dispatcher();
  if (failures == 0) std::printf("all C++ tests passed\n");
  return failures == 0 ? 0 : 1;
}
