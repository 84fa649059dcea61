// Times the pipeline stage by stage (load, text encoder, every U-Net call, VAE decode, the rest) on one device,
// dtype and graph optimisation, and prints the figures as one JSON object. scripts/bench_gpu.sh runs it beside the
// eager PyTorch reference (scripts/bench_eager.py); docs/PERFORMANCE.md reports what it measured.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "txt2img/device_memory.hpp"
#include "txt2img/error.hpp"
#include "txt2img/pipeline.hpp"
#include "txt2img/png.hpp"

using namespace txt2img;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// CUDA kernels run asynchronously: a stage's time is only known once the device has finished it.
void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// Marks the end of each stage as the pipeline reports it: the text embeddings ("unet/encoder_hidden_states"), the
// denoising loop (its last Observer::step: U-Net calls with guidance and scheduler steps, as diffusers' it/s counts
// them), and the decoded image ("vae/decode_out"). The loop is timed as a whole: waiting for the device after every
// step would keep the host from queueing the next step while the device runs this one, which the command line
// does not do either.
class StageTimer : public Observer {
 public:
  explicit StageTimer(torch::Device device) : device_(device) {}

  void start() {
    sync(device_);
    start_ = last_ = Clock::now();
    text_s = unet_s = decode_s = 0;
  }

  void tensor(const std::string& name, const torch::Tensor&) override {
    if (name == "unet/encoder_hidden_states") text_s = lap();
    if (name == "vae/decode_out") decode_s = lap();
  }

  void step(size_t call, size_t calls) override {
    if (call == calls) unet_s = lap();
  }

  double total() {
    sync(device_);
    return seconds_since(start_);
  }

  double text_s = 0;
  double unet_s = 0;
  double decode_s = 0;

 private:
  double lap() {
    sync(device_);
    const auto now = Clock::now();
    const double s = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return s;
  }

  torch::Device device_;
  Clock::time_point start_, last_;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times txt2img's pipeline stage by stage and prints one JSON object (see docs/PERFORMANCE.md)"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // scripts append overrides
  std::string model, device_name = "cpu", dtype_name = "fp32", graph_name = "none", decoder_name = "full", save_images,
                     attention_name = "default";
  int threads = 0, width = 0, height = 0, steps = 3, batch = 1, warmup = 1, runs = 1;
  double cfg = 7.5;
  bool no_safety = false, low_vram = false, channels_last = false, cuda_graph = false, plain_executor = false,
       cudnn_benchmark = false, parked_turns = false;
  app.add_option("--model", model, "Model bundle directory")->required();
  app.add_option("--device", device_name, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", dtype_name, "fp32, fp16 or bf16")->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  app.add_option("--graph", graph_name, "TorchScript graph optimisation after placement: none, freeze or optimize")
      ->check(CLI::IsMember({"none", "freeze", "optimize"}))
      ->capture_default_str();
  app.add_option("--decoder", decoder_name, "full (the VAE) or taesd (the bundle's TAESD)")
      ->check(CLI::IsMember({"full", "taesd"}))
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads for intra-op parallelism (0: LibTorch's default)");
  app.add_option("--width", width, "Image width (0: the model's default)");
  app.add_option("--height", height, "Image height (0: the model's default)");
  app.add_option("--steps", steps, "DDIM steps")->capture_default_str();
  app.add_option("--cfg", cfg, "Guidance scale (> 1: two U-Net rows per image)")->capture_default_str();
  app.add_option("--batch", batch, "Images per batch")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--warmup", warmup, "Untimed batches first (the first TorchScript calls profile and compile)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--runs", runs, "Timed batches")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_flag("--no-safety-checker", no_safety, "Skip the safety checker");
  app.add_flag("--low-vram", low_vram, "The command line's --low-vram (PipelineOptions::low_vram)");
  app.add_flag("--channels-last", channels_last, "U-Net convolutions in NHWC (an experiment, see PipelineOptions)");
  app.add_flag("--cuda-graph", cuda_graph, "Replay the U-Net call as a CUDA graph (an experiment; CUDA only)");
  app.add_flag("--plain-executor", plain_executor,
               "Run the TorchScript graphs unprofiled and unfused (an experiment: a faster first batch)");
  app.add_flag("--cudnn-benchmark", cudnn_benchmark, "Let cuDNN time its convolution algorithms (an experiment)");
  app.add_flag("--parked-turns", parked_turns,
               "With --low-vram on a GPU, the U-Net waits in page-locked host buffers kept between turns (an "
               "experiment, PipelineOptions::parked_turns)");
  app.add_option("--attention-kernel", attention_name,
                 "The kernel of scaled_dot_product_attention: default (PyTorch's choice), flash, memory-efficient, "
                 "cudnn or math (an experiment, PipelineOptions::attention_kernel)")
      ->check(CLI::IsMember({"default", "flash", "memory-efficient", "cudnn", "math"}))
      ->capture_default_str();
  app.add_option("--save-images", save_images,
                 "Write the last batch's images as DIR/0.png, 1.png, ... (to compare the experiments' pixels)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) at::set_num_threads(threads);
    PipelineOptions options;
    options.device = parse_device(device_name);
    // CLI11 checked every name against its list.
    options.dtype = *dtype_named(dtype_name);
    options.graph = *graph_optimization_named(graph_name);
    options.safety = no_safety ? SafetyMode::Off : SafetyMode::Report;
    options.low_vram = low_vram;
    options.decoder = *decoder_named(decoder_name);
    options.channels_last = channels_last;
    options.cuda_graph = cuda_graph;
    options.profiling_executor = !plain_executor;
    options.cudnn_benchmark = cudnn_benchmark;
    options.parked_turns = parked_turns;
    options.attention_kernel = *attention_kernel_named(attention_name);

    auto load_start = Clock::now();
    auto bundle = Bundle::open(model);
    auto pipeline = Pipeline::load(bundle, options);
    sync(options.device);
    const double load_s = seconds_since(load_start);

    GenerationParams params;
    params.width = width;
    params.height = height;
    params.steps = steps;
    params.cfg_scale = cfg;
    params = resolve_params(pipeline.manifest(), params);
    const std::vector<std::string> prompts(batch, "a photograph of an astronaut riding a horse");
    const std::vector<std::string> negatives(batch, "");

    nlohmann::json timed = nlohmann::json::array();
    std::vector<double> totals, unet_totals, warmup_totals;
    StageTimer timer(options.device);
    std::vector<GeneratedImage> images;
    for (int i = 0; i < warmup + runs; ++i) {
      std::vector<uint64_t> seeds;
      for (int b = 0; b < batch; ++b) seeds.push_back(static_cast<uint64_t>(i * batch + b));
      SeededNoise noise(seeds);
      timer.start();
      images = pipeline.generate(prompts, negatives, params, noise, &timer);
      const double total_s = timer.total();
      const double unet_s = timer.unet_s;
      const bool is_warmup = i < warmup;
      std::cerr << "txt2img-bench: " << (is_warmup ? "warm-up" : "timed") << " batch " << i + 1 << ": " << total_s
                << " s (text " << timer.text_s << ", U-Net " << unet_s << " for " << params.steps
                << " steps, decode " << timer.decode_s << ")\n";
      if (is_warmup) {
        warmup_totals.push_back(total_s);
        continue;
      }
      timed.push_back({{"total_s", total_s},
                       {"text_s", timer.text_s},
                       {"unet_s", unet_s},
                       {"decode_s", timer.decode_s},
                       {"other_s", total_s - timer.text_s - unet_s - timer.decode_s}});
      totals.push_back(total_s);
      unet_totals.push_back(unet_s);
    }

    if (!save_images.empty()) {
      std::filesystem::create_directories(save_images);
      for (size_t b = 0; b < images.size(); ++b)
        write_file_atomic(std::filesystem::path(save_images) / (std::to_string(b) + ".png"),
                          encode_png(images[b].rgb.data(), images[b].width, images[b].height, {}));
    }
    const double total_s = median(totals);
    const double unet_s = median(unet_totals);
    const MemoryPeaks peaks = memory_peaks(options.device);
    nlohmann::json out = {
        {"tool", "txt2img-bench"},
        {"libtorch", libtorch_version()},
        {"allocator", host_allocator()},
        {"device", options.device.str()},
        {"dtype", dtype_name},
        {"graph", graph_name},
        {"decoder", decoder_name},
        {"low_vram", low_vram},
        {"channels_last", channels_last},
        {"cuda_graph", cuda_graph},
        {"profiling_executor", !plain_executor},
        {"cudnn_benchmark", cudnn_benchmark},
        {"parked_turns", parked_turns},
        {"attention_kernel", attention_name},
        {"threads", at::get_num_threads()},
        {"width", params.width},
        {"height", params.height},
        {"steps", params.steps},
        {"cfg", params.cfg_scale},
        {"batch", batch},
        {"safety_checker", !no_safety},
        {"load_s", load_s},
        {"seconds_per_batch", total_s},
        {"seconds_per_image", total_s / batch},
        {"images_per_s", batch / total_s},
        {"unet_it_per_s", params.steps / unet_s},
        {"peak_rss_mb", peaks.host_rss_mib},
        {"peak_vram_allocated_mb", peaks.device_allocated_mib ? nlohmann::json(*peaks.device_allocated_mib) : nullptr},
        {"peak_vram_reserved_mb", peaks.device_reserved_mib ? nlohmann::json(*peaks.device_reserved_mib) : nullptr},
        {"warmup_s", warmup_totals},
        {"runs", timed},
    };
    std::cout << out.dump() << std::endl;
    return 0;
  } catch (const Error& e) {
    std::cerr << "txt2img-bench: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "txt2img-bench: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}
