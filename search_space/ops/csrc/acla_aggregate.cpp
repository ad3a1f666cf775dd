// Fused ACLA attention on the CPU, channels-last. For query q, with Kt = L*K keys (layer by layer):
//   w[q, :]   = softmax of logits[q, :] over the keys whose gate is 1 (all keys when there are no gates)
//   out[q, c] = bias[c] + sum_l sum_{k in layer l} w[q,k] * bilinear(value_l[:, :, c], x + dx_k, y + dy_k)
// The values are the module's projected reference layers (search_space/acla.py). Gated-off keys are never read,
// and the (B, C, K, H, W) samples are never materialised. The backward gathers per query for the offset, logit
// and gate gradients and scatters into the value gradients from tasks that own disjoint (image, layer,
// channel-block) slices, so it needs no atomics.
//
// Precision: the value maps, the residual and the output gradient are float, double or bfloat16 (value_t); the
// offsets, logits, gates, bias, attention weights and every sum are in acc_t, float for bfloat16 values (mixed
// precision: bf16 maps read from memory at half the bytes, softmax and accumulation in fp32, one rounding per
// stored element) and the values' own type otherwise.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
#include <immintrin.h>
#define ACLA_DPBF16 1  // the CPU's bf16 dot-product instruction (vdpbf16ps): two products per fp32 lane
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using bf16 = uint16_t;  // the raw bits of a bfloat16: converted below with shifts the compiler vectorises

template <typename T> struct Accumulator { using type = T; };
template <> struct Accumulator<bf16> { using type = float; };
template <typename T> using acc_of = typename Accumulator<T>::type;

inline float widen(bf16 bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}
inline float widen(float value) { return value; }
inline double widen(double value) { return value; }

// The dot product of n channels, summed in acc_t. For bf16 rows on a CPU with AVX512-BF16, vdpbf16ps multiplies
// pairs of bf16 channels exactly and adds them into fp32 lanes: half the instructions of widening and fusing.
template <typename T>
inline acc_of<T> dot_row(const T* a, const T* b, int64_t n) {
  acc_of<T> sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) sum += widen(a[c]) * widen(b[c]);
  return sum;
}
#ifdef ACLA_DPBF16
template <>
inline float dot_row<bf16>(const bf16* a, const bf16* b, int64_t n) {
  __m256 lanes = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= n; c += 16)
    lanes = _mm256_dpbf16_ps(lanes, (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c)),
                             (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + c)));
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps(lanes, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  float sum = _mm_cvtss_f32(_mm_add_ss(half, _mm_movehdup_ps(half)));
  for (; c < n; ++c) sum += widen(a[c]) * widen(b[c]);
  return sum;
}
#endif

// Round to nearest even, as torch's float -> bfloat16 conversion does (NaN stays NaN).
template <typename T> inline T narrow(acc_of<T> value) { return value; }
template <> inline bf16 narrow<bf16>(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof word);
  if ((word & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  word += 0x7fffu + ((word >> 16) & 1u);
  return static_cast<bf16>(word >> 16);
}

template <typename scalar_t>
struct Taps {
  int64_t index[4];    // flat pixel index of each tap, -1 outside the image
  scalar_t weight[4];  // bilinear weight of each tap (0 outside)
  scalar_t dwx[4];     // d weight / d x (0 outside)
  scalar_t dwy[4];     // d weight / d y (0 outside)
};

template <typename scalar_t>
inline Taps<scalar_t> make_taps(scalar_t px, scalar_t py, int64_t H, int64_t W) {
  Taps<scalar_t> t;
  const scalar_t fx0 = std::floor(px), fy0 = std::floor(py);
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  const scalar_t ax = px - fx0, ay = py - fy0;
  for (int i = 0; i < 4; ++i) {
    const int64_t xi = x0 + (i & 1), yi = y0 + (i >> 1);
    const scalar_t wx = (i & 1) ? ax : 1 - ax, wy = (i >> 1) ? ay : 1 - ay;
    const bool inside = xi >= 0 && xi < W && yi >= 0 && yi < H;
    t.index[i] = inside ? yi * W + xi : -1;
    t.weight[i] = inside ? wx * wy : 0;
    t.dwx[i] = inside ? ((i & 1) ? wy : -wy) : 0;
    t.dwy[i] = inside ? ((i >> 1) ? wx : -wx) : 0;
  }
  return t;
}

template <typename value_t>
struct Problem {
  using acc_t = acc_of<value_t>;
  std::vector<const value_t*> values;  // L maps (B, H, W, C)
  const acc_t* offsets;                // (B, H, W, Kt, 2) as (dx, dy)
  const acc_t* logits;                 // (B, H, W, Kt)
  const acc_t* gates;                  // (B, H, W, Kt) of 0/1, or nullptr: every key on
  const acc_t* bias;                   // (C)
  const value_t* residual;             // (B, H, W, C) added to the output (a module's skip connection), or nullptr
  int64_t B, H, W, C, L, K, Kt;
};

// The masked softmax of one query: exp(logit - max) for every key (into e), the weights (into w), and the
// denominator. With every gate off the weights are 0 and the denominator is the unmasked sum, so that the gate
// gradients stay finite (a key turned on alone would take all the weight).
template <typename scalar_t>
inline scalar_t masked_softmax(const scalar_t* logits, const scalar_t* gates, int64_t n, scalar_t* e, scalar_t* w) {
  scalar_t top = logits[0];
  for (int64_t k = 1; k < n; ++k) top = std::max(top, logits[k]);
  scalar_t all = 0, on = 0;
  for (int64_t k = 0; k < n; ++k) {
    e[k] = std::exp(logits[k] - top);
    all += e[k];
    on += gates ? e[k] * gates[k] : e[k];
  }
  const scalar_t denominator = on > 0 ? on : all;
  for (int64_t k = 0; k < n; ++k) w[k] = (gates ? e[k] * gates[k] : e[k]) / denominator;
  return denominator;
}

// CT > 0 fixes the channel count at compile time so the channel loops unroll into registers.
// With a residual, each query's output starts from its residual row and the bias, so the module's skip
// connection costs no pass of its own.
template <typename value_t, int CT>
void forward_kernel(const Problem<value_t>& p, value_t* out, acc_of<value_t>* weights) {
  using acc_t = acc_of<value_t>;
  // Without a compile-time width, float and double accumulate in the output row itself; bf16 in a local row.
  constexpr bool in_place = CT == 0 && std::is_same<value_t, acc_t>::value;
  const int64_t C = CT > 0 ? CT : p.C, HW = p.H * p.W;
  at::parallel_for(0, p.B * HW, 16, [&](int64_t begin, int64_t end) {
    acc_t acc[CT > 0 ? CT : 1];
    std::vector<acc_t> row(CT > 0 || in_place ? 0 : C);
    std::vector<acc_t> e(p.Kt);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / HW, pixel = q % HW, y = pixel / p.W, x = pixel % p.W;
      acc_t* w = weights + q * p.Kt;
      masked_softmax<acc_t>(p.logits + q * p.Kt, p.gates ? p.gates + q * p.Kt : nullptr, p.Kt, e.data(), w);
      value_t* o = out + q * C;
      acc_t* a = CT > 0 ? acc : (in_place ? reinterpret_cast<acc_t*>(o) : row.data());
      if (p.residual) {
        const value_t* r = p.residual + q * C;
        for (int64_t c = 0; c < C; ++c) a[c] = widen(r[c]) + p.bias[c];
      } else {
        for (int64_t c = 0; c < C; ++c) a[c] = p.bias[c];
      }
      for (int64_t l = 0; l < p.L; ++l) {
        const value_t* base = p.values[l] + b * HW * C;
        for (int64_t k = l * p.K; k < (l + 1) * p.K; ++k) {
          if (w[k] == 0) continue;  // a gated-off key costs nothing
          const acc_t* d = p.offsets + (q * p.Kt + k) * 2;
          const auto t = make_taps<acc_t>(x + d[0], y + d[1], p.H, p.W);
          for (int i = 0; i < 4; ++i) {
            if (t.weight[i] == 0) continue;
            const acc_t tw = w[k] * t.weight[i];
            const value_t* v = base + t.index[i] * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) a[c] += tw * widen(v[c]);
          }
        }
      }
      if (!in_place)
        for (int64_t c = 0; c < C; ++c) o[c] = narrow<value_t>(a[c]);
    }
  });
}

// One (image, layer, channel block [c0, c1)) task. Partial dot products over the block go to `partial`
// (3 per query and key: d loss / d w, then the offset gradient); the caller sums the blocks. Without
// `grad_value` nothing is scattered; without `off_key_grads` (a derived top-k module) gated-off keys are skipped.
// The value gradient is summed in acc_t: in place for float and double, in a scratch slice for bf16, rounded once.
template <typename value_t, int CT>
void backward_task(const Problem<value_t>& p, const acc_of<value_t>* weights, const value_t* grad_out,
                   value_t* grad_value, acc_of<value_t>* partial, bool off_key_grads, int64_t b, int64_t l, int64_t c0,
                   int64_t c1) {
  using acc_t = acc_of<value_t>;
  constexpr bool in_place = std::is_same<value_t, acc_t>::value;
  const int64_t C = CT > 0 ? CT : p.C, HW = p.H * p.W;
  const int64_t width = CT > 0 ? CT : c1 - c0;  // CT > 0 only for the whole channel range
  const value_t* base = p.values[l] + b * HW * C + c0;
  value_t* target = grad_value ? grad_value + b * HW * C + c0 : nullptr;
  std::vector<acc_t> scratch(target != nullptr && !in_place ? HW * width : 0);
  // this task alone writes these channels of this slice: zero them here, cache-warm
  acc_t* gbase = target == nullptr ? nullptr : (in_place ? reinterpret_cast<acc_t*>(target) : scratch.data());
  const int64_t stride = in_place ? C : width;  // between pixels in gbase
  if (gbase != nullptr && in_place)
    for (int64_t pixel = 0; pixel < HW; ++pixel) std::fill(gbase + pixel * C, gbase + pixel * C + width, acc_t(0));
  acc_t fixed[CT > 0 ? CT : 1];  // a bf16 output-gradient row, widened once for all its keys and taps
  std::vector<acc_t> row(CT > 0 || in_place ? 0 : width);
  for (int64_t pixel = 0; pixel < HW; ++pixel) {
    const int64_t q = b * HW + pixel, y = pixel / p.W, x = pixel % p.W;
    const value_t* raw = grad_out + q * C + c0;
    const acc_t* g;
    if constexpr (in_place) {
      g = raw;
    } else {
      acc_t* wide = CT > 0 ? fixed : row.data();
      for (int64_t c = 0; c < width; ++c) wide[c] = widen(raw[c]);
      g = wide;
    }
    for (int64_t k = l * p.K; k < (l + 1) * p.K; ++k) {
      acc_t* out = partial + (q * p.Kt + k) * 3;
      const acc_t wk = weights[q * p.Kt + k];
      if (!off_key_grads && p.gates && p.gates[q * p.Kt + k] == 0) {
        out[0] = out[1] = out[2] = 0;
        continue;
      }
      const acc_t* d = p.offsets + (q * p.Kt + k) * 2;
      const auto t = make_taps<acc_t>(x + d[0], y + d[1], p.H, p.W);
      acc_t gw = 0, gx = 0, gy = 0;
      for (int i = 0; i < 4; ++i) {
        if (t.index[i] < 0) continue;
        const value_t* v = base + t.index[i] * C;
        acc_t dot;
        if constexpr (in_place) {
          dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < width; ++c) dot += g[c] * v[c];
        } else {
          dot = dot_row(raw, v, width);
        }
        gw += t.weight[i] * dot;
        gx += t.dwx[i] * dot;
        gy += t.dwy[i] * dot;
        const acc_t tw = wk * t.weight[i];
        if (gbase == nullptr || tw == 0) continue;
        acc_t* dst = gbase + t.index[i] * stride;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) dst[c] += tw * g[c];
      }
      out[0] = gw;
      out[1] = wk * gx;
      out[2] = wk * gy;
    }
  }
  if (gbase != nullptr && !in_place)
    for (int64_t pixel = 0; pixel < HW; ++pixel)
      for (int64_t c = 0; c < width; ++c) target[pixel * C + c] = narrow<value_t>(gbase[pixel * width + c]);
}

// Per query: sum the channel blocks, write the offset gradients, and back-propagate through the masked softmax.
template <typename value_t, typename scalar_t = acc_of<value_t>>
void softmax_backward(const Problem<value_t>& p, const scalar_t* weights, const scalar_t* partial, int64_t blocks,
                      scalar_t* grad_offsets, scalar_t* grad_logits, scalar_t* grad_gates) {
  const int64_t queries = p.B * p.H * p.W, per_block = queries * p.Kt * 3;
  at::parallel_for(0, queries, 64, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> gw(p.Kt), e(p.Kt), w(p.Kt);
    for (int64_t q = begin; q < end; ++q) {
      scalar_t dot = 0;
      for (int64_t k = 0; k < p.Kt; ++k) {
        scalar_t s[3] = {0, 0, 0};
        for (int64_t cb = 0; cb < blocks; ++cb)
          for (int j = 0; j < 3; ++j) s[j] += partial[cb * per_block + (q * p.Kt + k) * 3 + j];
        gw[k] = s[0];
        grad_offsets[(q * p.Kt + k) * 2] = s[1];
        grad_offsets[(q * p.Kt + k) * 2 + 1] = s[2];
        dot += weights[q * p.Kt + k] * s[0];
      }
      for (int64_t k = 0; k < p.Kt; ++k) grad_logits[q * p.Kt + k] = weights[q * p.Kt + k] * (gw[k] - dot);
      if (grad_gates == nullptr) continue;
      // d w_i / d gate_k = (e_k / denominator) (delta_ik - w_i): the same form, with e_k / denominator for w_k.
      const scalar_t* gates = p.gates + q * p.Kt;
      const scalar_t denominator = masked_softmax<scalar_t>(p.logits + q * p.Kt, gates, p.Kt, e.data(), w.data());
      for (int64_t k = 0; k < p.Kt; ++k) grad_gates[q * p.Kt + k] = e[k] / denominator * (gw[k] - dot);
    }
  });
}

// The problem's pointers, after checking every tensor: the maps (and the residual) of one dtype, value_t; the
// offsets, logits, gates and bias in its accumulation type.
template <typename value_t>
Problem<value_t> make_problem(const std::vector<torch::Tensor>& values, const torch::Tensor& offsets,
                              const torch::Tensor& logits, const torch::Tensor& gates, const torch::Tensor& bias,
                              int64_t keys, const torch::Tensor& residual = torch::Tensor()) {
  using acc_t = acc_of<value_t>;
  TORCH_CHECK(!values.empty() && values[0].dim() == 4, "values must be (B, H, W, C) maps");
  const auto& v0 = values[0];
  const auto acc_type = std::is_same<value_t, acc_t>::value ? v0.scalar_type() : at::kFloat;
  Problem<value_t> p;
  p.B = v0.size(0), p.H = v0.size(1), p.W = v0.size(2), p.C = v0.size(3), p.L = values.size();
  p.K = keys, p.Kt = p.L * keys;
  for (const auto& v : values) {
    TORCH_CHECK(v.sizes() == v0.sizes() && v.is_contiguous() && v.device().is_cpu() &&
                v.scalar_type() == v0.scalar_type(), "value maps must be contiguous CPU (B,H,W,C) of one dtype");
    p.values.push_back(static_cast<const value_t*>(v.data_ptr()));
  }
  const auto check = [&](const torch::Tensor& t, torch::IntArrayRef shape, at::ScalarType type, const char* what) {
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.sizes() == shape && t.scalar_type() == type,
                what, " must be contiguous CPU ", shape, " of ", type, " (for ", v0.scalar_type(), " values), got ",
                t.sizes(), " of ", t.scalar_type());
  };
  check(offsets, {p.B, p.H, p.W, p.Kt, 2}, acc_type, "offsets");
  check(logits, {p.B, p.H, p.W, p.Kt}, acc_type, "logits");
  check(bias, {p.C}, acc_type, "bias");
  p.offsets = static_cast<const acc_t*>(offsets.data_ptr());
  p.logits = static_cast<const acc_t*>(logits.data_ptr());
  p.bias = static_cast<const acc_t*>(bias.data_ptr());
  p.gates = nullptr;
  if (gates.defined() && gates.numel() > 0) {
    check(gates, {p.B, p.H, p.W, p.Kt}, acc_type, "gates");
    p.gates = static_cast<const acc_t*>(gates.data_ptr());
  }
  p.residual = nullptr;
  if (residual.defined() && residual.numel() > 0) {
    check(residual, v0.sizes(), v0.scalar_type(), "residual");
    p.residual = static_cast<const value_t*>(residual.data_ptr());
  }
  return p;
}

// Calls fn(value_t()) for the maps' dtype: float, double, or bfloat16 (as its raw bits).
template <typename Fn>
void dispatch_values(at::ScalarType type, Fn&& fn) {
  switch (type) {
    case at::kFloat: fn(float()); break;
    case at::kDouble: fn(double()); break;
    case at::kBFloat16: fn(bf16()); break;
    default: TORCH_CHECK(false, "ACLA's CPU kernel takes float, double or bfloat16 value maps, got ", type);
  }
}

// Calls fn(std::integral_constant<int, CT>) with CT = C for the common channel counts, 0 (runtime) otherwise.
template <typename Fn>
void dispatch_channels(int64_t C, Fn&& fn) {
  switch (C) {
    case 16: fn(std::integral_constant<int, 16>()); break;
    case 24: fn(std::integral_constant<int, 24>()); break;
    case 28: fn(std::integral_constant<int, 28>()); break;
    case 32: fn(std::integral_constant<int, 32>()); break;
    case 40: fn(std::integral_constant<int, 40>()); break;
    case 48: fn(std::integral_constant<int, 48>()); break;
    case 56: fn(std::integral_constant<int, 56>()); break;
    case 64: fn(std::integral_constant<int, 64>()); break;
    case 96: fn(std::integral_constant<int, 96>()); break;
    case 128: fn(std::integral_constant<int, 128>()); break;
    default: fn(std::integral_constant<int, 0>());
  }
}

}  // namespace

// Returns the output (B, H, W, C) in the values' dtype, plus `residual` where it is not empty, and the attention
// weights (B, H, W, Kt) in the accumulation dtype.
std::vector<torch::Tensor> acla_forward(std::vector<torch::Tensor> values, torch::Tensor offsets, torch::Tensor logits,
                                        torch::Tensor gates, torch::Tensor bias, int64_t keys, torch::Tensor residual) {
  std::vector<torch::Tensor> result;
  dispatch_values(values.at(0).scalar_type(), [&](auto tag) {
    using value_t = decltype(tag);
    using acc_t = acc_of<value_t>;
    const auto p = make_problem<value_t>(values, offsets, logits, gates, bias, keys, residual);
    auto out = torch::empty_like(values[0]);
    auto weights = torch::empty_like(logits);
    dispatch_channels(p.C, [&](auto ct) {
      forward_kernel<value_t, decltype(ct)::value>(p, static_cast<value_t*>(out.data_ptr()),
                                                  static_cast<acc_t*>(weights.data_ptr()));
    });
    result = {out, weights};
  });
  return result;
}

// Returns the value gradients (one per map, in its dtype; empty without value_grad), then the offset, logit and
// gate gradients (empty without gates), then the bias gradient, these in the accumulation dtype.
std::vector<torch::Tensor> acla_backward(std::vector<torch::Tensor> values, torch::Tensor offsets, torch::Tensor logits,
                                         torch::Tensor gates, torch::Tensor bias, torch::Tensor weights, int64_t keys,
                                         torch::Tensor grad_out, bool value_grad, bool off_key_grads) {
  grad_out = grad_out.contiguous();
  std::vector<torch::Tensor> result;
  dispatch_values(values.at(0).scalar_type(), [&](auto tag) {
    using value_t = decltype(tag);
    using acc_t = acc_of<value_t>;
    const auto p = make_problem<value_t>(values, offsets, logits, gates, bias, keys);
    TORCH_CHECK(grad_out.sizes() == values[0].sizes() && grad_out.scalar_type() == values[0].scalar_type(),
                "the output gradient must match the values");
    TORCH_CHECK(weights.is_contiguous() && weights.sizes() == logits.sizes() &&
                weights.scalar_type() == logits.scalar_type(), "weights must match the logits");
    // Enough (image, layer) tasks keep every thread busy; otherwise split the channels into blocks as well.
    const int64_t tasks = p.B * p.L, threads = at::get_num_threads();
    const int64_t blocks = tasks >= threads ? 1 : std::max<int64_t>(1, std::min<int64_t>(p.C / 8, (2 * threads + tasks - 1) / tasks));
    const int64_t block = (p.C + blocks - 1) / blocks, per_block = p.B * p.H * p.W * p.Kt * 3;
    std::vector<value_t*> grad_ptrs;
    for (const auto& v : values) {
      result.push_back(value_grad ? torch::empty_like(v) : torch::Tensor());  // each task zeroes its own part
      grad_ptrs.push_back(value_grad ? static_cast<value_t*>(result.back().data_ptr()) : nullptr);
    }
    auto partial = torch::empty({blocks * per_block}, offsets.options());
    const acc_t* w = static_cast<const acc_t*>(weights.data_ptr());
    const value_t* g = static_cast<const value_t*>(grad_out.data_ptr());
    acc_t* part = static_cast<acc_t*>(partial.data_ptr());
    dispatch_channels(p.C, [&](auto ct) {
      at::parallel_for(0, p.B * p.L * blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / (p.L * blocks), l = (task / blocks) % p.L, cb = task % blocks;
          const int64_t c0 = std::min(p.C, cb * block), c1 = std::min(p.C, c0 + block);
          if (blocks == 1)
            backward_task<value_t, decltype(ct)::value>(p, w, g, grad_ptrs[l], part, off_key_grads, b, l, 0, p.C);
          else
            backward_task<value_t, 0>(p, w, g, grad_ptrs[l], part + cb * per_block, off_key_grads, b, l, c0, c1);
        }
      });
    });
    auto grad_offsets = torch::empty_like(offsets);
    auto grad_logits = torch::empty_like(logits);
    auto grad_gates = p.gates ? torch::empty_like(logits) : torch::Tensor();
    softmax_backward<value_t>(p, w, part, blocks, static_cast<acc_t*>(grad_offsets.data_ptr()),
                              static_cast<acc_t*>(grad_logits.data_ptr()),
                              p.gates ? static_cast<acc_t*>(grad_gates.data_ptr()) : nullptr);
    result.push_back(grad_offsets);
    result.push_back(grad_logits);
    result.push_back(grad_gates);
    result.push_back(grad_out.view({-1, p.C}).sum(0, false, bias.scalar_type()));  // the bias gradient
  });
  return result;
}

// The derived module's hard gates from scores (B, H, W, L, K): 1 for the counts[l] highest scores of each query
// and layer (ties go to the lower key index), 0 elsewhere.
torch::Tensor top_k_mask(torch::Tensor scores, std::vector<int64_t> counts, bool positive) {
  TORCH_CHECK(scores.dim() == 5 && scores.is_contiguous() && scores.device().is_cpu(), "scores must be contiguous CPU (B,H,W,L,K)");
  const int64_t L = scores.size(3), K = scores.size(4), rows = scores.numel() / K;
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == L, "one count per layer");
  auto mask = torch::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "top_k_mask", [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    scalar_t* m = mask.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = s + r * K;
        for (int64_t k = 0; k < K; ++k) {
          int64_t rank = 0;
          for (int64_t j = 0; j < K; ++j) rank += row[j] > row[k] || (row[j] == row[k] && j < k);
          m[r * K + k] = rank < counts[r % L] && (!positive || row[k] > 0) ? 1 : 0;
        }
      }
    });
  });
  return mask;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("top_k_mask", &top_k_mask, "per-query top-k key mask (CPU)");
  m.def("forward", &acla_forward, "fused ACLA attention core (CPU)");
  m.def("backward", &acla_backward, "its backward (CPU)");
}
