// Peak memory of this process, for reports (--json, the run summary, the benchmark).
#pragma once

#include <c10/core/Device.h>

#include <optional>
#include <string>

namespace txt2img {

struct MemoryPeaks {
  double host_rss_mib = 0;  // the resident set's peak since the process started
  // CUDA only: the caching allocator's peaks since the process started, as
  // torch.cuda.max_memory_allocated / max_memory_reserved report them. Reserved is what the process holds from the
  // driver (allocated plus cached free blocks); the CUDA context itself (some 500 MiB) is in neither.
  std::optional<double> device_allocated_mib;
  std::optional<double> device_reserved_mib;
};

MemoryPeaks memory_peaks(const c10::Device& device);

// Hands the caching allocator's free blocks back to the driver (torch.cuda.empty_cache), so that memory a module
// gave up is available to other processes and shows as free; a no-op off CUDA.
void release_cached_device_memory(const c10::Device& device);

// Whether this build links LibTorch's CUDA libraries (CUDA graphs, device memory statistics).
bool built_with_cuda();

// The malloc this process runs on, for version lines and benchmarks: "tcmalloc <version>" where gperftools'
// tcmalloc is linked (or preloaded), else "glibc malloc".
std::string host_allocator();

}  // namespace txt2img
