// A model bundle: the directory scripts/convert.py writes (TorchScript modules, tokenizer, model.json manifest).
#pragma once

#include <nlohmann/json.hpp>
#include <torch/script.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "txt2img/safety.hpp"
#include "txt2img/scheduler.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img {

// The newest bundle format this binary reads; it reads every older one. The converter writes 2 only for bundles that
// a format-1 reader would misread (a zero-terminal-SNR schedule, an inpainting U-Net), so others stay readable by
// older binaries.
constexpr int kBundleFormatVersion = 2;
// CLIP ViT-L/14's text tower, SD v1's text encoder.
constexpr int kDefaultTextLayers = 12;
// CLIP's vocabulary; textual-inversion embeddings take the ids from here on.
constexpr int kClipVocabulary = 49408;

struct BundleFile {
  std::string name;
  std::string sha256;
  uint64_t bytes = 0;
};

// A LoRA added to the bundle by scripts/add_lora.py, for prompts to name in a <lora:name:weight> tag: its packed
// factors (`file`, relative to the bundle) and the 12-digit hash A1111 knows the original file by.
struct LoraFile {
  std::string name;
  std::string file;
  std::string a1111_hash;
};

struct Manifest {
  int format_version = 0;
  std::string family;
  int latent_channels = 4;
  double scale_factor = 0.18215;
  int vae_scale_factor = 8;
  int default_size = 512;
  int context_length = 77;
  int pad_id = 49407;
  int text_hidden_size = 768;
  // An LCM-distilled U-Net's guidance embedding width (model.json "guidance_embedding_dim"; 0: none). Such a model
  // takes the guidance scale as an input and runs without classifier-free guidance.
  int guidance_embedding_dim = 0;
  // An inpainting U-Net (model.json "inpainting"): besides the latents it takes a mask and the masked image's
  // latents (2 * latent_channels + 1 input channels), which vae_encoder.pt makes. txt2img masks the whole image.
  bool inpainting = false;
  // Layers of the text encoder (model.json "text_num_layers"); bundles converted before it was recorded are
  // assumed to have SD v1's 12 (text_num_layers_known false).
  int text_num_layers = kDefaultTextLayers;
  bool text_num_layers_known = false;
  SchedulerConfig scheduler;
  // The source's diffusers scheduler class (model.json scheduler.class) and the txt2img sampler that computes it
  // (scheduler.sampler, what --sampler model runs); empty where the source had none, txt2img has no such sampler,
  // or the bundle predates them.
  std::string source_scheduler_class;
  std::string source_sampler;
  std::optional<SafetyConfig> safety;  // absent when the bundle has no safety checker
  std::vector<BundleFile> files;
  std::string converter_version;
  std::string torch_version;  // PyTorch that exported the modules
  std::string model_name;     // a short human name (the source's file or folder name)
  std::string model_hash;     // 10 hex digits, A1111-style where the source was one checkpoint file
  // A VAE that replaced the model's (convert.py --vae): its file or folder name and A1111's 10-digit hash; empty
  // when the bundle decodes with the model's own.
  std::string vae_name;
  std::string vae_hash;
  // The TAESD decoder of convert.py --taesd (taesd_decoder.pt): its file or folder name and the first 10 hex digits
  // of its sha256; empty for one without a name (random-weight bundles) or when the bundle has none.
  std::string taesd_name;
  std::string taesd_hash;
  // Textual-inversion embeddings converted into the text encoder (convert.py --embedding).
  std::vector<TextualInversion> embeddings;
  // What AUTOMATIC1111 names these resources by in its metadata, from model.json's "source": each merged LoRA's file
  // name without extension and its 12-digit hash ("a1111_hash"; absent from bundles converted before it was
  // recorded), and each embedding's name and the first 12 hex digits of its file's sha256.
  std::vector<std::pair<std::string, std::string>> lora_hashes;
  std::map<std::string, std::string> embedding_hashes;
  // The LoRAs a prompt can add (model.json "loras"), sorted by name; find_lora looks one up.
  std::vector<LoraFile> loras;
  const LoraFile* find_lora(const std::string& name) const;
  nlohmann::json raw;

  // Throws Error(Bundle) naming the field that is missing or wrong.
  static Manifest from_json(const nlohmann::json& j, const std::string& where);
};

class Bundle {
 public:
  // Reads and validates model.json and checks that every listed file has its recorded size. The networks every
  // run needs must exist; an optional file (safety checker, TAESD, a LoRA) may have been deleted, see has().
  // Throws Error(Bundle) with a message that says how to fix it.
  static Bundle open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  // Whether model.json lists the file.
  bool lists(const std::string& file) const;
  // Whether model.json lists the file and it exists.
  bool has(const std::string& file) const;
  std::filesystem::path path(const std::string& file) const { return dir_ / file; }

  // The files (of those that exist) whose sha256 differs from model.json's, recomputed.
  std::vector<std::string> corrupt_files() const;

  // The bundle's tokenizer, with its embeddings. Throws Error(Bundle).
  Tokenizer load_tokenizer() const;

  // torch::jit::load with errors turned into Error(Bundle), including the "exported by a newer PyTorch" case and a
  // module that is not the network its file stands for (another module's file copied in its place).
  torch::jit::Module load_module(const std::string& file, torch::Device device) const;

 private:
  std::filesystem::path dir_;
  Manifest manifest_;
  std::set<std::string> absent_;  // listed optional files that do not exist
};

// What adds a LoRA to the bundle at `dir` again, for messages: "scripts/add_lora.py DIR FILE --overwrite".
std::string add_lora_again(const std::filesystem::path& dir);

// The PyTorch version this binary's LibTorch reports, e.g. "1.13.1".
std::string libtorch_version();

// Whether the bundle's modules attend through PyTorch's scaled_dot_product_attention, which the converter uses
// wherever the exporting PyTorch has it (>= 2.0), rather than through plain matrix products.
bool attends_through_sdpa(const Manifest& manifest);

}  // namespace txt2img
