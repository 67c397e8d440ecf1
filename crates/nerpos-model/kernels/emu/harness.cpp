// Runs one operation of kernels/train.cu on the CPU emulator, with the same launches src/cuda.rs makes
// on a GPU. Usage: harness DIR. DIR/job.txt: the operation on the first line, then `key value` lines;
// arrays in DIR/NAME.bin (f32 for tensors whatever the storage type, i32/u32 for indices); results
// written as DIR/NAME.bin (f32). tests/cuda_kernels.rs writes the jobs and compares the results with
// the CPU kernels.

#define NERPOS_CUDA_EMU
#include "../train.cu"

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

using nerpos_emu::launch;

static std::string dir;
static std::map<std::string, std::string> job;

template <typename V>
static std::vector<V> read(const std::string &name) {
  std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
  if (!f) throw std::runtime_error("missing " + name + ".bin");
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<V> out(bytes.size() / sizeof(V));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(V));
  return out;
}

static void write(const std::string &name, const std::vector<float> &v) {
  std::ofstream f(dir + "/" + name + ".bin", std::ios::binary);
  f.write((const char *)v.data(), v.size() * sizeof(float));
}

static long long num(const std::string &k) { return std::stoll(job.at(k)); }
static double real(const std::string &k) { return std::stod(job.at(k)); }

// Storage conversions: the kernels see T, files hold f32.
template <typename T> static std::vector<T> to(const std::vector<float> &v);
template <> std::vector<float> to(const std::vector<float> &v) { return v; }
template <> std::vector<bf16> to(const std::vector<float> &v) {
  std::vector<bf16> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16_rn(v[i]);
  return o;
}
static std::vector<float> back(const std::vector<float> &v) { return v; }
static std::vector<float> back(const std::vector<bf16> &v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __bfloat162float(v[i]);
  return o;
}

// Rows per column-sum chunk: the policy of src/cuda.rs.
static int chunk_rows(int rows) { return std::max(32, (rows + 511) / 512); }
static unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b); }

// Column sums of `partial` (chunks × width) into `out` — the finish kernel.
template <typename T>
static void finish(std::vector<float> &partial, T *out, int chunks, int width);
#define FINISH(T, S)                                                                    \
  template <> void finish(std::vector<float> &partial, T *out, int chunks, int width) {  \
    launch({cdiv(width, 256), 1}, {256, 1}, 0,                                           \
           [&] { nerpos_colsum_finish_##S(partial.data(), out, chunks, width); });       \
  }
FINISH(float, f32)
FINISH(bf16, bf16)

template <typename T> struct K;
#define KERNELS(T, S)                                                                   \
  template <> struct K<T> {                                                              \
    static constexpr auto colsum_partial = nerpos_colsum_partial_##S;                    \
    static constexpr auto ln_fwd = nerpos_ln_fwd_##S;                                    \
    static constexpr auto ln_bwd_rows = nerpos_ln_bwd_rows_##S;                          \
    static constexpr auto ln_bwd_cols = nerpos_ln_bwd_cols_##S;                          \
    static constexpr auto bias_gelu = nerpos_bias_gelu_##S;                              \
    static constexpr auto bias_dropout_residual = nerpos_bias_dropout_residual_##S;      \
    static constexpr auto gelu_bwd_cols = nerpos_gelu_bwd_cols_##S;                      \
    static constexpr auto dropout_bwd_cols = nerpos_dropout_bwd_cols_##S;                \
    static constexpr auto attn_fwd = nerpos_attn_fwd_##S;                                \
    static constexpr auto attn_bwd_scores = nerpos_attn_bwd_scores_##S;                  \
    static constexpr auto attn_bwd_dq = nerpos_attn_bwd_dq_##S;                          \
    static constexpr auto attn_bwd_dkv = nerpos_attn_bwd_dkv_##S;                        \
    static constexpr auto cross_entropy = nerpos_cross_entropy_##S;                      \
    static constexpr auto dropout_mask = nerpos_dropout_mask_##S;                        \
    static constexpr auto attn_dropout_mask_padded = nerpos_attn_dropout_mask_padded_##S; \
  };
KERNELS(float, f32)
KERNELS(bf16, bf16)

static AttShape att_shape() {
  AttShape s;
  s.heads = (int)num("heads");
  s.dh = (int)num("head_dim");
  s.scale = 1.0f / std::sqrt((float)s.dh);
  s.site = (uint64_t)std::stoull(job.at("site"));
  s.threshold = (uint32_t)num("threshold");
  s.keep_scale = (float)real("keep_scale");
  return s;
}

// Offsets of each row's heads·L² block of probabilities (as src/cuda.rs computes them).
static std::vector<long long> prob_offsets(const std::vector<int> &starts, int heads) {
  std::vector<long long> off(1, 0);
  for (size_t r = 0; r + 1 < starts.size(); ++r) {
    long long l = starts[r + 1] - starts[r];
    off.push_back(off.back() + heads * l * l);
  }
  return off;
}

template <typename T>
static void run(const std::string &op) {
  if (op == "colsum") {
    auto x = to<T>(read<float>("x"));
    int rows = (int)num("rows"), width = (int)num("width"), chunk = chunk_rows(rows);
    int chunks = (int)cdiv(rows, chunk);
    std::vector<float> partial((size_t)chunks * width);
    std::vector<T> out(width);
    launch({cdiv(width, 256), (unsigned)chunks}, {256, 1}, 0,
           [&] { K<T>::colsum_partial(x.data(), partial.data(), rows, width, chunk); });
    finish<T>(partial, out.data(), chunks, width);
    write("out", back(out));
  } else if (op == "ln_fwd") {
    auto x = to<T>(read<float>("x")), w = to<T>(read<float>("w")), b = to<T>(read<float>("b"));
    int h = (int)w.size(), rows = (int)(x.size() / h);
    std::vector<T> y(x.size());
    launch({cdiv(rows, 4), 1}, {32, 4}, 0,
           [&] { K<T>::ln_fwd(x.data(), w.data(), b.data(), y.data(), rows, h, (float)real("eps")); });
    write("y", back(y));
  } else if (op == "ln_bwd") {
    auto x = to<T>(read<float>("x")), w = to<T>(read<float>("w")), dy = to<T>(read<float>("dy"));
    int h = (int)w.size(), rows = (int)(x.size() / h), chunk = chunk_rows(rows);
    int chunks = (int)cdiv(rows, chunk);
    std::vector<T> out((size_t)(rows + 2) * h);
    std::vector<float> stats(2 * rows), partial((size_t)chunks * 2 * h);
    launch({cdiv(rows, 4), 1}, {32, 4}, 0, [&] {
      K<T>::ln_bwd_rows(x.data(), w.data(), dy.data(), out.data(), stats.data(), rows, h, (float)real("eps"));
    });
    launch({cdiv(h, 256), (unsigned)chunks}, {256, 1}, 0,
           [&] { K<T>::ln_bwd_cols(x.data(), dy.data(), stats.data(), partial.data(), rows, h, chunk); });
    finish<T>(partial, out.data() + (size_t)rows * h, chunks, 2 * h);
    write("out", back(out));
  } else if (op == "bias_gelu") {
    auto y = to<T>(read<float>("y")), bias = to<T>(read<float>("bias"));
    unsigned long long n = y.size();
    std::vector<T> out(2 * n);
    launch({std::min(cdiv(n, 256), 4096u), 1}, {256, 1}, 0,
           [&] { K<T>::bias_gelu(y.data(), bias.data(), out.data(), n, (int)bias.size()); });
    write("out", back(out));
  } else if (op == "bias_dropout_residual") {
    auto y = to<T>(read<float>("y")), bias = to<T>(read<float>("bias")), r = to<T>(read<float>("residual"));
    std::vector<T> mask;
    if (num("has_mask")) mask = to<T>(read<float>("mask"));
    unsigned long long n = y.size();
    std::vector<T> z(n);
    launch({std::min(cdiv(n, 256), 4096u), 1}, {256, 1}, 0, [&] {
      K<T>::bias_dropout_residual(y.data(), bias.data(), mask.empty() ? nullptr : mask.data(), r.data(), z.data(),
                                  n, (int)bias.size());
    });
    write("z", back(z));
  } else if (op == "gelu_colsum" || op == "dropout_colsum") {
    auto a = to<T>(read<float>("a"));
    std::vector<T> b;
    if (op == "gelu_colsum" || num("has_mask")) b = to<T>(read<float>("b"));
    int width = (int)num("width"), rows = (int)(a.size() / width), chunk = chunk_rows(rows);
    int chunks = (int)cdiv(rows, chunk);
    std::vector<T> out((size_t)(rows + 1) * width);
    std::vector<float> partial((size_t)chunks * width);
    launch({cdiv(width, 256), (unsigned)chunks}, {256, 1}, 0, [&] {
      if (op == "gelu_colsum")
        K<T>::gelu_bwd_cols(a.data(), b.data(), out.data(), partial.data(), rows, width, chunk);
      else
        K<T>::dropout_bwd_cols(a.data(), b.empty() ? nullptr : b.data(), out.data(), partial.data(), rows, width,
                               chunk);
    });
    finish<T>(partial, out.data() + (size_t)rows * width, chunks, width);
    write("out", back(out));
  } else if (op == "attn_fwd" || op == "attn_bwd") {
    AttShape s = att_shape();
    auto qkv = to<T>(read<float>("qkv"));
    auto starts = read<int>("starts");
    // The sentences' keys (u64), read only with dropout: without it the kernels get a null pointer.
    std::vector<uint64_t> keys;
    if (s.threshold < 65536u) keys = read<uint64_t>("keys");
    const uint64_t *k = keys.empty() ? nullptr : keys.data();
    int rows = (int)starts.size() - 1, n = starts.back(), H = s.heads * s.dh;
    auto poff = prob_offsets(starts, s.heads);
    size_t shared = sizeof(float) * (ATT_TILE * (s.dh + 1) + ATT_WARPS * s.dh);
    size_t shared2 = sizeof(float) * 2 * ATT_TILE * (s.dh + 1);
    unsigned blocks = (unsigned)(rows * s.heads);
    if (op == "attn_fwd") {
      std::vector<float> probs(poff.back()), ctx((size_t)n * H);
      launch({blocks, 1}, {32, ATT_WARPS}, shared,
             [&] { K<T>::attn_fwd(qkv.data(), starts.data(), k, poff.data(), probs.data(), ctx.data(), s); });
      write("ctx", ctx);
      write("probs", probs);
    } else {
      auto dctx = to<T>(read<float>("dctx"));
      auto probs = read<float>("probs");
      std::vector<float> dz(poff.back()), dqkv((size_t)n * 3 * H);
      launch({blocks, 1}, {32, ATT_WARPS}, shared, [&] {
        K<T>::attn_bwd_scores(qkv.data(), dctx.data(), starts.data(), k, poff.data(), probs.data(), dz.data(), s);
      });
      launch({blocks, 1}, {32, ATT_WARPS}, shared2,
             [&] { K<T>::attn_bwd_dq(qkv.data(), starts.data(), poff.data(), dz.data(), dqkv.data(), s); });
      launch({blocks, 1}, {32, ATT_WARPS}, shared2, [&] {
        K<T>::attn_bwd_dkv(qkv.data(), dctx.data(), starts.data(), k, poff.data(), probs.data(), dz.data(),
                           dqkv.data(), s);
      });
      write("dqkv", dqkv);
    }
  } else if (op == "dropout_mask") {
    // The scaled mask of a [count, width] tensor whose row e is position pos[e] of sentence rows[e].
    auto keys = read<uint64_t>("keys");
    auto rows = read<uint32_t>("rows"), pos = read<uint32_t>("pos");
    unsigned long long count = rows.size();
    int width = (int)num("width");
    std::vector<T> out(count * width);
    uint64_t site = std::stoull(job.at("site"));
    uint32_t threshold = (uint32_t)num("threshold");
    float scale = (float)real("keep_scale");
    launch({std::min(cdiv(count * width, 256), 4096u), 1}, {256, 1}, 0, [&] {
      K<T>::dropout_mask(out.data(), keys.data(), rows.data(), pos.data(), count, width, site, threshold, scale);
    });
    write("mask", back(out));
  } else if (op == "attn_dropout_mask_padded") {
    auto keys = read<uint64_t>("keys");
    auto starts = read<int>("starts");
    int b = (int)starts.size() - 1, heads = (int)num("heads"), t = 0;
    for (int r = 0; r < b; ++r) t = std::max(t, starts[r + 1] - starts[r]);
    std::vector<T> out((size_t)b * heads * t * t);
    uint64_t site = std::stoull(job.at("site"));
    uint32_t threshold = (uint32_t)num("threshold");
    float scale = (float)real("keep_scale");
    launch({(unsigned)(b * heads), 1}, {256, 1}, 0, [&] {
      K<T>::attn_dropout_mask_padded(out.data(), keys.data(), starts.data(), heads, t, site, threshold, scale);
    });
    write("mask", back(out));
  } else if (op == "cross_entropy") {
    auto logits = to<T>(read<float>("logits"));
    auto labels = read<uint32_t>("labels");
    int m = (int)labels.size(), c = (int)(logits.size() / std::max(m, 1));
    std::vector<float> loss(m);
    std::vector<T> grad(logits.size());
    launch({cdiv(m, 4), 1}, {32, 4}, 0,
           [&] { K<T>::cross_entropy(logits.data(), labels.data(), loss.data(), grad.data(), m, c); });
    write("loss", loss);
    write("grad", back(grad));
  } else {
    throw std::runtime_error("unknown operation " + op);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: harness DIR\n");
    return 2;
  }
  dir = argv[1];
  std::ifstream f(dir + "/job.txt");
  std::string op, line;
  std::getline(f, op);
  while (std::getline(f, line)) {
    std::istringstream l(line);
    std::string k, v;
    if (l >> k >> v) job[k] = v;
  }
  try {
    if (job.count("dtype") && job["dtype"] == "bf16")
      run<bf16>(op);
    else
      run<float>(op);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "harness: %s\n", e.what());
    return 1;
  }
  return 0;
}
