#include "address_space.hpp"

#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstddef>
#include <fstream>
#include <string>

#include "txt2img/error.hpp"

namespace txt2img {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
// OpenBLAS maps one buffer of about 35 MiB (its BUFFER_SIZE and alignment) per thread in a product, and one more for
// the calling thread; 64 MiB each leaves room for builds with larger buffers.
constexpr uint64_t kBlasBufferBytes = 64 * kMiB;
constexpr uint64_t kHeadroomBytes = 64 * kMiB;

// The process's mapped address space, as the limit counts it (/proc/self/statm's first field, in pages).
uint64_t mapped_bytes() {
  uint64_t pages = 0;
  std::ifstream("/proc/self/statm") >> pages;
  return pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

void reserve_address_space(uint64_t model_bytes) {
  rlimit limit{};
  if (getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return;
  const auto threads = static_cast<uint64_t>(at::get_num_threads());
  const uint64_t blas_bytes = (threads + 1) * kBlasBufferBytes;
  // Loading a module holds its file's bytes and the tensors made of them at once; the rest is headroom for the
  // libraries' own allocations (oneDNN's generated kernels, SentencePiece), which crash rather than fail cleanly
  // where an allocation fails.
  const uint64_t needed = 2 * model_bytes + blas_bytes + kHeadroomBytes;
  const uint64_t mapped = mapped_bytes();
  const uint64_t left = limit.rlim_cur > mapped ? limit.rlim_cur - mapped : 0;
  if (left < needed)
    throw Error(ErrorKind::Runtime, "the address-space limit (ulimit -v " + std::to_string(limit.rlim_cur / 1024) +
                                        ") leaves " + std::to_string(left / kMiB) + " MiB, less than the " +
                                        std::to_string(needed / kMiB) + " MiB a run needs at least (twice the " +
                                        std::to_string(model_bytes / kMiB) + " MiB of model files that load, " +
                                        std::to_string(blas_bytes / kMiB) + " MiB of buffers for the BLAS library's " +
                                        std::to_string(threads) + (threads == 1 ? " thread" : " threads") + ", " +
                                        std::to_string(kHeadroomBytes / kMiB) +
                                        " MiB more); raise it (ulimit -v unlimited)" +
                                        (threads > 1 ? " or use fewer threads (--threads)" : ""));
  const auto a = torch::ones({512, 512});
  (void)torch::mm(a, a);
}

}  // namespace txt2img
