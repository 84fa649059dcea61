// How a Pipeline runs: device, dtype, safety checking, decoder, memory and speed options.
#pragma once

#include <torch/script.h>

#include <optional>
#include <string>

namespace txt2img {

enum class SafetyMode {
  Replace,  // flagged images become black (the reference behaviour; default)
  Report,   // flagged images are kept and only marked
  Off,      // no checker (must be asked for explicitly)
};

// What turns the final latents into pixels: the model's VAE (the reference), or TAESD, a tiny approximation of it
// (madebyollin/taesd; convert.py --taesd) that decodes in a fraction of the time with softer detail.
enum class Decoder { Full, Taesd };

// What is done to the TorchScript graphs once they sit on their device and dtype (torch::jit::freeze inlines the
// weights as constants; optimize_for_inference adds backend-specific rewrites). docs/PERFORMANCE.md measures them.
enum class GraphOptimization { None, Freeze, FreezeAndOptimize };

// The kernel of PyTorch's scaled_dot_product_attention, through which the U-Nets of bundles exported by PyTorch
// >= 2.0 attend. Default leaves PyTorch's choice (which depends on its version, the card and cuDNN's version); each
// other value allows that kernel alone, so that a call it cannot serve fails instead of falling back to another.
enum class AttentionKernel { Default, Flash, MemoryEfficient, CuDNN, Math };

// The options by the names the command line gives them (nullopt for another name): dtypes "fp16", "bf16" and "fp32";
// graph optimisations "none", "freeze" and "optimize"; decoders "full" and "taesd"; attention kernels "default",
// "flash", "memory-efficient", "cudnn" and "math"; safety modes "replace", "report" and "off".
std::optional<torch::ScalarType> dtype_named(const std::string& name);
std::optional<GraphOptimization> graph_optimization_named(const std::string& name);
std::optional<Decoder> decoder_named(const std::string& name);
std::string attention_kernel_name(AttentionKernel kernel);
std::optional<AttentionKernel> attention_kernel_named(const std::string& name);
std::string safety_mode_name(SafetyMode mode);

// The device named "cpu", "cuda" (CUDA device 0) or "cuda:K". Throws Error(Usage) for another name and for a CUDA
// device this LibTorch does not see.
torch::Device parse_device(const std::string& name);
// Throws Error(Usage) where txt2img cannot run in `dtype` on `device`: a dtype other than fp32, fp16 and bf16, a CUDA
// device this LibTorch does not see, a device other than the CPU and CUDA, fp16 on the CPU.
void check_placement(torch::Device device, torch::ScalarType dtype);

struct PipelineOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  SafetyMode safety = SafetyMode::Replace;
  GraphOptimization graph = GraphOptimization::None;
  // Pipeline::load throws Error(Usage) for Taesd when the bundle has no taesd_decoder.pt.
  Decoder decoder = Decoder::Full;
  // Load the bundle's TAESD for previews while denoising (Observer::wants_preview); Pipeline::load throws
  // Error(Usage) when the bundle has none.
  bool previews = false;
  // Keep the device for the module at work: the text encoder and the safety checker (and an inpainting model's VAE
  // encoder) run on the CPU in float32; on a GPU the U-Net holds device memory only while denoising and the VAE
  // decoder only while decoding (the other waits in host memory: two copies of the U-Net's weights a batch); and the
  // decoder works in overlapping tiles when a side exceeds 64 latents (512 pixels), so that large images decode
  // within a small GPU's memory. Up to that size the images are the same as without it. Pipeline::load refuses it
  // with a graph optimisation (frozen weights are constants of the graph and cannot move).
  bool low_vram = false;
  // AUTOMATIC1111's Tiling: the U-Net's and the VAE's convolutions pad circularly instead of with zeros, so that an
  // image's opposite edges meet and copies of it tile without seams (the TAESD decoder keeps its zeros, as in A1111).
  // With low_vram the decoder then works on the whole image: tiles would wrap around inside themselves. Pipeline::load
  // throws Error(Bundle) for a bundle converted before its convolutions could switch (convert it again).
  bool tiling = false;
  // The U-Net's convolutions in NHWC (channels_last), and the U-Net call captured as a CUDA graph and replayed
  // (CUDA builds and devices only; Pipeline::load throws Error(Usage) otherwise). Measured by txt2img-bench
  // (docs/PERFORMANCE.md): together, and with profiling_executor off, they are the command line's CUDA default.
  bool channels_last = false;
  bool cuda_graph = false;
  // TorchScript's profiling executor (LibTorch's default, process-wide): it profiles each module's first calls and
  // compiles fused kernels on a later one, which costs seconds before the first image on CUDA. false runs the
  // graphs as they are.
  bool profiling_executor = true;
  // cuDNN times its convolution algorithms on the first call of each shape and keeps the fastest (process-wide,
  // as torch.backends.cudnn.benchmark). An experiment of txt2img-bench: on an H200 it bought nothing on top of the
  // command line's default and cost the first image 9 s (docs/PERFORMANCE.md, 2026-11-27).
  bool cudnn_benchmark = false;
  // With low_vram on a GPU: the U-Net waits for its turn in page-locked host buffers kept from one turn to the next
  // (HostParking) instead of fresh pageable memory. An experiment of txt2img-bench, not yet measured on a GPU; it
  // keeps at least the U-Net's size of host memory page-locked for the process's life.
  bool parked_turns = false;
  // For the U-Net's calls only (LibTorch's switches, as torch.nn.attention.sdpa_kernel sets them around a block). An
  // experiment of txt2img-bench; Pipeline::load throws Error(Usage) for a kernel other than Default when the bundle's
  // attention is not scaled_dot_product_attention, the device cannot run it, or this LibTorch cannot select it.
  AttentionKernel attention_kernel = AttentionKernel::Default;
};

}  // namespace txt2img
