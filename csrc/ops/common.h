#pragma once
// Helpers of the op glue (csrc/ops) shared by every family.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>

namespace norm_ext {

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

inline void check_device_type(const char* op, const at::Tensor& t, c10::DeviceType expected) {
  TORCH_CHECK(t.device().type() == expected, op, ": expected ", c10::DeviceTypeName(expected, /*lower_case=*/true),
              " tensors, got input on ", t.device());
}

// A backend's guard where the device needs none (CPU).
struct NoDeviceGuard {
  explicit NoDeviceGuard(c10::Device) {}
};

}  // namespace norm_ext
