// Fused deformable aggregation on the CPU: out[b,y,x,:] = sum_k w[b,y,x,k] * bilinear(value[b], x+dx, y+dy).
// Channels-last, so the inner loop runs over contiguous channels. The backward gathers per query for the
// offset and weight gradients, and scatters into the value gradient from tasks that own disjoint
// (batch, channel-block) slices, so no two threads ever write the same element (no atomics).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>

namespace {

template <typename scalar_t>
struct Taps {
  int64_t index[4];   // flat pixel index of each tap, -1 when outside the image
  scalar_t weight[4]; // bilinear weight of each tap
  scalar_t dwx[4];    // d weight / d x
  scalar_t dwy[4];    // d weight / d y
};

template <typename scalar_t>
inline Taps<scalar_t> make_taps(scalar_t px, scalar_t py, int64_t H, int64_t W) {
  Taps<scalar_t> t;
  const scalar_t fx0 = std::floor(px), fy0 = std::floor(py);
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  const scalar_t ax = px - fx0, ay = py - fy0;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const scalar_t wx[4] = {1 - ax, ax, 1 - ax, ax};
  const scalar_t wy[4] = {1 - ay, 1 - ay, ay, ay};
  const scalar_t sx[4] = {-1, 1, -1, 1};
  const scalar_t sy[4] = {-1, -1, 1, 1};
  for (int i = 0; i < 4; ++i) {
    const bool inside = xs[i] >= 0 && xs[i] < W && ys[i] >= 0 && ys[i] < H;
    t.index[i] = inside ? ys[i] * W + xs[i] : -1;
    t.weight[i] = wx[i] * wy[i];
    t.dwx[i] = sx[i] * wy[i];
    t.dwy[i] = sy[i] * wx[i];
  }
  return t;
}

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const scalar_t* offsets, const scalar_t* weights, scalar_t* out,
                    int64_t B, int64_t H, int64_t W, int64_t C, int64_t K) {
  const int64_t queries = B * H * W;
  at::parallel_for(0, queries, 64, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / (H * W), pixel = q % (H * W), y = pixel / W, x = pixel % W;
      scalar_t* o = out + q * C;
      for (int64_t c = 0; c < C; ++c) o[c] = 0;
      const scalar_t* base = value + b * H * W * C;
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t wk = weights[q * K + k];
        if (wk == 0) continue;
        const auto t = make_taps<scalar_t>(x + offsets[(q * K + k) * 2], y + offsets[(q * K + k) * 2 + 1], H, W);
        for (int i = 0; i < 4; ++i) {
          if (t.index[i] < 0 || t.weight[i] == 0) continue;
          const scalar_t tw = wk * t.weight[i];
          const scalar_t* v = base + t.index[i] * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += tw * v[c];
        }
      }
    }
  });
}

template <typename scalar_t>
inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

// One query's backward: gather the four taps for the offset and weight gradients and, when `grad_value`
// is given, scatter into channels [c0, c1) of the value gradient.
template <typename scalar_t>
inline void backward_query(const scalar_t* base, const scalar_t* offsets, const scalar_t* weights, const scalar_t* g,
                           scalar_t* grad_value, scalar_t* grad_offsets, scalar_t* grad_weights,
                           int64_t q, int64_t y, int64_t x, int64_t H, int64_t W, int64_t C, int64_t K,
                           bool gather, int64_t c0, int64_t c1) {
  for (int64_t k = 0; k < K; ++k) {
    const scalar_t wk = weights[q * K + k];
    const auto t = make_taps<scalar_t>(x + offsets[(q * K + k) * 2], y + offsets[(q * K + k) * 2 + 1], H, W);
    scalar_t gw = 0, gx = 0, gy = 0;
    for (int i = 0; i < 4; ++i) {
      if (t.index[i] < 0) continue;
      if (gather) {
        const scalar_t d = dot(g, base + t.index[i] * C, C);
        gw += t.weight[i] * d;
        gx += t.dwx[i] * d;
        gy += t.dwy[i] * d;
      }
      if (grad_value != nullptr && wk != 0 && t.weight[i] != 0) {
        const scalar_t tw = wk * t.weight[i];
        scalar_t* dst = grad_value + t.index[i] * C;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[c] += tw * g[c];
      }
    }
    if (gather) {
      grad_weights[q * K + k] = gw;
      grad_offsets[(q * K + k) * 2] = wk * gx;
      grad_offsets[(q * K + k) * 2 + 1] = wk * gy;
    }
  }
}

template <typename scalar_t>
void backward_kernel(const scalar_t* value, const scalar_t* offsets, const scalar_t* weights, const scalar_t* grad_out,
                     scalar_t* grad_value, scalar_t* grad_offsets, scalar_t* grad_weights,
                     int64_t B, int64_t H, int64_t W, int64_t C, int64_t K) {
  const int64_t HW = H * W;
  if (B >= at::get_num_threads()) {
    // One pass: each task owns whole images, so its scatter never meets another task's.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        for (int64_t pixel = 0; pixel < HW; ++pixel) {
          const int64_t q = b * HW + pixel;
          backward_query<scalar_t>(value + b * HW * C, offsets, weights, grad_out + q * C, grad_value + b * HW * C,
                                   grad_offsets, grad_weights, q, pixel / W, pixel % W, H, W, C, K, true, 0, C);
        }
    });
    return;
  }
  // Fewer images than threads: gather per query, then scatter from tasks owning disjoint channel blocks.
  at::parallel_for(0, B * HW, 64, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / HW, pixel = q % HW;
      backward_query<scalar_t>(value + b * HW * C, offsets, weights, grad_out + q * C, nullptr, grad_offsets,
                               grad_weights, q, pixel / W, pixel % W, H, W, C, K, true, 0, C);
    }
  });
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(C / 8, (2 * at::get_num_threads() + B - 1) / B));
  const int64_t block = (C + blocks - 1) / blocks;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = (task % blocks) * block, c1 = std::min(C, c0 + block);
      for (int64_t pixel = 0; pixel < HW; ++pixel) {
        const int64_t q = b * HW + pixel;
        backward_query<scalar_t>(value + b * HW * C, offsets, weights, grad_out + q * C, grad_value + b * HW * C,
                                 nullptr, nullptr, q, pixel / W, pixel % W, H, W, C, K, false, c0, c1);
      }
    }
  });
}

void check(const torch::Tensor& value, const torch::Tensor& offsets, const torch::Tensor& weights) {
  TORCH_CHECK(value.device().is_cpu() && value.dim() == 4 && value.is_contiguous(), "value must be contiguous CPU (B,H,W,C)");
  TORCH_CHECK(offsets.dim() == 5 && offsets.size(4) == 2 && offsets.is_contiguous(), "offsets must be contiguous (B,H,W,K,2)");
  TORCH_CHECK(weights.dim() == 4 && weights.is_contiguous(), "weights must be contiguous (B,H,W,K)");
  TORCH_CHECK(offsets.scalar_type() == value.scalar_type() && weights.scalar_type() == value.scalar_type(), "dtypes differ");
}

}  // namespace

torch::Tensor deform_aggregate_forward(torch::Tensor value, torch::Tensor offsets, torch::Tensor weights) {
  check(value, offsets, weights);
  const int64_t B = value.size(0), H = value.size(1), W = value.size(2), C = value.size(3), K = offsets.size(3);
  auto out = torch::empty_like(value);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "deform_aggregate_forward", [&] {
    forward_kernel<scalar_t>(value.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), B, H, W, C, K);
  });
  return out;
}

std::vector<torch::Tensor> deform_aggregate_backward(torch::Tensor value, torch::Tensor offsets, torch::Tensor weights,
                                                     torch::Tensor grad_out) {
  check(value, offsets, weights);
  grad_out = grad_out.contiguous();
  const int64_t B = value.size(0), H = value.size(1), W = value.size(2), C = value.size(3), K = offsets.size(3);
  auto grad_value = torch::zeros_like(value);
  auto grad_offsets = torch::empty_like(offsets);
  auto grad_weights = torch::empty_like(weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "deform_aggregate_backward", [&] {
    backward_kernel<scalar_t>(value.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                              grad_out.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
                              grad_offsets.data_ptr<scalar_t>(), grad_weights.data_ptr<scalar_t>(), B, H, W, C, K);
  });
  return {grad_value, grad_offsets, grad_weights};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &deform_aggregate_forward, "fused deformable aggregation (CPU)");
  m.def("backward", &deform_aggregate_backward, "its backward (CPU)");
}
