#include "txt2img/device_memory.hpp"

#include <dlfcn.h>
#include <sys/resource.h>

#ifdef TXT2IMG_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace txt2img {
namespace {

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux reports kibibytes
}

#ifdef TXT2IMG_WITH_CUDA
constexpr double kMiB = 1024.0 * 1024.0;

c10::DeviceIndex index_of(const c10::Device& device) {
  return device.has_index() ? device.index() : c10::cuda::current_device();
}
#endif

}  // namespace

bool built_with_cuda() {
#ifdef TXT2IMG_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string host_allocator() {
  // Looked up rather than called: the build may lack tcmalloc, and a preloaded one counts as well.
  using Version = const char* (*)(int*, int*, const char**);
  if (const auto version = reinterpret_cast<Version>(dlsym(RTLD_DEFAULT, "tc_version"))) {
    int major = 0, minor = 0;
    const char* patch = "";
    version(&major, &minor, &patch);
    return "tcmalloc " + std::to_string(major) + "." + std::to_string(minor) + patch;
  }
  return "glibc malloc";
}

MemoryPeaks memory_peaks(const c10::Device& device) {
  MemoryPeaks peaks;
  peaks.host_rss_mib = peak_rss_mib();
#ifdef TXT2IMG_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index_of(device));
    // Index 0 of each statistic is the aggregate over small and large pools (StatType::AGGREGATE, whose namespace
    // moved between PyTorch releases).
    peaks.device_allocated_mib = static_cast<double>(stats.allocated_bytes[0].peak) / kMiB;
    peaks.device_reserved_mib = static_cast<double>(stats.reserved_bytes[0].peak) / kMiB;
  }
#else
  (void)device;
#endif
  return peaks;
}

void release_cached_device_memory(const c10::Device& device) {
#ifdef TXT2IMG_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#else
  (void)device;
#endif
}

}  // namespace txt2img
