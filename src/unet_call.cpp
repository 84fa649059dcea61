#include "unet_call.hpp"

#include <algorithm>

#include "attention_kernel.hpp"
#include "txt2img/device_memory.hpp"
#include "txt2img/error.hpp"

#ifdef TXT2IMG_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace txt2img {

void to_channels_last(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto parameter : module.parameters())
    if (parameter.dim() == 4) parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
}

#ifdef TXT2IMG_WITH_CUDA

// Static input and output buffers of one captured call: replaying the graph reads and writes exactly these.
struct UNetCall::CapturedGraph {
  torch::Tensor x, t, context, guidance, out;  // guidance: undefined for U-Nets without a guidance embedding
  at::cuda::CUDAGraph graph;

  static bool same_kind(const torch::Tensor& a, const torch::Tensor& b) {
    if (!a.defined() || !b.defined()) return a.defined() == b.defined();
    return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type();
  }
  bool fits(const torch::Tensor& x_in, const torch::Tensor& t_in, const torch::Tensor& context_in,
            const torch::Tensor& guidance_in) const {
    return same_kind(x, x_in) && same_kind(t, t_in) && same_kind(context, context_in) &&
           same_kind(guidance, guidance_in);
  }
};

// TorchScript's profiling executor settles on its optimised graph within a module's first two calls for a shape;
// capturing earlier would record the profiling run.
constexpr int kWarmupCallsBeforeCapture = 3;

std::unique_ptr<UNetCall::CapturedGraph> UNetCall::capture(const torch::Tensor& x, const torch::Tensor& t,
                                                           const torch::Tensor& context, const torch::Tensor& guidance,
                                                           CapturedGraph* sharing_pool) {
  // The synchronisations below wait on the current device, which --device cuda:K must make K's.
  const c10::cuda::CUDAGuard on_device(x.device());
  auto g = std::make_unique<CapturedGraph>();
  g->x = x.clone();
  g->t = t.clone();
  g->context = context.clone();
  if (guidance.defined()) g->guidance = guidance.clone();
  // Capture needs a stream other than the legacy default one, and that stream must not start before the buffers
  // above are written.
  c10::cuda::device_synchronize();
  auto side = c10::cuda::getStreamFromPool(false, x.device().index());
  {
    c10::cuda::CUDAStreamGuard on_side(side);
    for (int i = 0; i < kWarmupCallsBeforeCapture; ++i) forward(g->x, g->t, g->context, g->guidance);
    side.synchronize();
    try {
      g->graph.capture_begin(sharing_pool ? sharing_pool->graph.pool() : c10::cuda::MempoolId_t{0, 0});
      g->out = forward(g->x, g->t, g->context, g->guidance);
      g->graph.capture_end();
    } catch (const std::exception& e) {  // c10::Error, or the TorchScript interpreter's std::runtime_error
      throw Error(ErrorKind::Runtime, "capturing the U-Net as a CUDA graph failed (" +
                                          std::string(backend_failure(e).what()) + "); run without CUDA graphs");
    }
  }
  c10::cuda::device_synchronize();
  return g;
}

torch::Tensor UNetCall::operator()(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                                   const torch::Tensor& guidance) {
  if (!cuda_graph_) return forward(x, t, context, guidance);
  auto fitting = std::find_if(graphs_.begin(), graphs_.end(),
                              [&](const auto& graph) { return graph->fits(x, t, context, guidance); });
  if (fitting == graphs_.end()) {
    // Graphs of another latent size are another pass's: their memory pools go before this capture allocates. Of a
    // pass's, the one used longest ago makes room (a step takes at most two shapes).
    graphs_.erase(
        std::remove_if(graphs_.begin(), graphs_.end(),
                       [&](const auto& graph) { return !graph->x.sizes().slice(2).equals(x.sizes().slice(2)); }),
        graphs_.end());
    if (graphs_.size() == 2) graphs_.erase(graphs_.begin());
    // A pass's graphs replay one at a time on one stream and their outputs are copied out at once, so they can share
    // one memory pool.
    graphs_.push_back(capture(x, t, context, guidance, graphs_.empty() ? nullptr : graphs_.front().get()));
  } else {
    std::rotate(fitting, fitting + 1, graphs_.end());  // the most recently used last
  }
  auto& graph = *graphs_.back();
  graph.x.copy_(x);
  graph.t.copy_(t);
  graph.context.copy_(context);
  if (guidance.defined()) graph.guidance.copy_(guidance);
  graph.graph.replay();
  // Samplers keep earlier model outputs (PNDM, LMS, DPM-Solver); the next replay overwrites this buffer.
  return graph.out.clone();
}

#else

struct UNetCall::CapturedGraph {};  // never made: the constructor refuses cuda_graph in this build

torch::Tensor UNetCall::operator()(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                                   const torch::Tensor& guidance) {
  return forward(x, t, context, guidance);
}

#endif

UNetCall::UNetCall(UNetCall&&) noexcept = default;
UNetCall& UNetCall::operator=(UNetCall&&) noexcept = default;
UNetCall::~UNetCall() = default;

UNetCall::UNetCall(torch::jit::Module module, torch::Device device, bool channels_last, bool cuda_graph,
                   AttentionKernel attention_kernel)
    : module_(std::move(module)),
      device_(device),
      channels_last_(channels_last),
      cuda_graph_(cuda_graph),
      attention_kernel_(attention_kernel) {
  if (cuda_graph && !device.is_cuda())
    throw Error(ErrorKind::Usage, "CUDA graphs need a CUDA device (the U-Net runs on " + device.str() + ")");
  if (cuda_graph && !built_with_cuda())
    throw Error(ErrorKind::Usage, "CUDA graphs need a CUDA build of txt2img");
}

void UNetCall::to(torch::Device device, bool parked) {
  if (device == device_) return;
  graphs_.clear();
  if (parked && device.is_cpu()) {
    parking_.park(module_);
  } else if (parked_) {
    parking_.unpark(module_, device);
  } else {
    module_.to(device);
  }
  parked_ = parked && device.is_cpu();
  device_ = device;
}

torch::Tensor UNetCall::forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context,
                                const torch::Tensor& guidance) {
  const auto input = channels_last_ ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
  // A capture records the kernels chosen while it runs, so replays keep them.
  AttentionKernelScope kernel(attention_kernel_);
  // Bundles exported before guidance embeddings existed take three inputs; only an LCM model's gets the fourth.
  if (!guidance.defined()) return module_.forward({input, t, context}).toTensor();
  return module_.forward({input, t, context, guidance}).toTensor();
}

}  // namespace txt2img
