// The kernels built for the CPU emulator as a shared library: the Rust launch code (src/launch.rs) runs
// here, on host memory, exactly the launches it makes on a GPU — the same kernel names, grid and block
// shapes, shared memory and arguments, checked against each kernel's parameter list as
// cuLaunchKernel's caller must. Built and loaded by the tests (src/emu.rs).

#define NERPOS_CUDA_EMU
#include "cuda_emu.h"

#include "../all.cu"

#include <cstdio>

namespace {

// Writes `msg` into the caller's buffer; returns 1 (the failure code).
int fail(char *err, size_t len, const std::string &msg) {
  std::snprintf(err, len, "%s", msg.c_str());
  return 1;
}

}  // namespace

// Launches kernel `name` with `count` parameters (params[i] points at parameter i's value, of
// sizes[i] bytes, as cuLaunchKernel's kernelParams). Returns 0, or 1 with the reason in `err`.
extern "C" int nerpos_emu_launch(const char *name, const unsigned *grid, const unsigned *block, unsigned shared,
                                 void **params, const size_t *sizes, size_t count, char *err, size_t err_len) {
  auto &reg = nerpos_emu::registry();
  auto it = reg.find(name);
  if (it == reg.end()) return fail(err, err_len, std::string("no kernel named ") + name);
  const auto &entry = it->second;
  if (entry.sizes.size() != count)
    return fail(err, err_len,
                std::string(name) + ": " + std::to_string(count) + " arguments for " +
                    std::to_string(entry.sizes.size()) + " parameters");
  for (size_t i = 0; i < count; ++i)
    if (entry.sizes[i] != sizes[i])
      return fail(err, err_len,
                  std::string(name) + ": argument " + std::to_string(i) + " has " + std::to_string(sizes[i]) +
                      " bytes, the parameter " + std::to_string(entry.sizes[i]));
  if (grid[2] != 1 || block[2] != 1) return fail(err, err_len, std::string(name) + ": 3-D launches are not used");
  nerpos_emu::launch({grid[0], grid[1], 1}, {block[0], block[1], 1}, shared, [&] { entry.call(params); });
  return 0;
}
