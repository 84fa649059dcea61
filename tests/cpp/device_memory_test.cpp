#include "txt2img/device_memory.hpp"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

namespace {

TEST(MemoryPeaks, HostPeakFollowsTouchedMemoryAndTheCpuHasNoDeviceFigures) {
  const auto before = txt2img::memory_peaks(c10::Device(c10::kCPU));
  EXPECT_GT(before.host_rss_mib, 1.0);
  EXPECT_FALSE(before.device_allocated_mib.has_value());
  EXPECT_FALSE(before.device_reserved_mib.has_value());
  {
    std::vector<char> block(512u << 20, 1);  // value-initialised: every page is touched
    const auto during = txt2img::memory_peaks(c10::Device(c10::kCPU));
    EXPECT_GE(during.host_rss_mib, before.host_rss_mib + 400) << static_cast<int>(block[12345]);
  }
  EXPECT_GE(txt2img::memory_peaks(c10::Device(c10::kCPU)).host_rss_mib, before.host_rss_mib + 400);  // a peak
}

TEST(MemoryPeaks, CudaStatisticsExistExactlyInCudaBuilds) {
#ifdef TXT2IMG_EXPECT_CUDA
  EXPECT_TRUE(txt2img::built_with_cuda());
#else
  EXPECT_FALSE(txt2img::built_with_cuda());
#endif
}

// Where the build found tcmalloc, it is the process's malloc (linked ahead of libc, not merely loaded) and says so.
TEST(HostAllocator, TcmallocIsTheMallocWhereTheBuildLinksIt) {
  const auto name = txt2img::host_allocator();
#ifdef TXT2IMG_EXPECT_TCMALLOC
  EXPECT_EQ(name.rfind("tcmalloc ", 0), 0u) << name;
  const auto* tc_malloc = dlsym(RTLD_DEFAULT, "tc_malloc");
  ASSERT_NE(tc_malloc, nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "malloc"), tc_malloc);
#else
  EXPECT_EQ(name, "glibc malloc");
#endif
}

}  // namespace
