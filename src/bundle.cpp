#include "txt2img/bundle.hpp"

#include <torch/version.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "sha256.hpp"
#include "txt2img/error.hpp"
#include "txt2img/params.hpp"

namespace txt2img {
namespace {

const char* const kConvertHint = "; convert a checkpoint with scripts/convert.py CHECKPOINT --out DIR (see README.md)";

// The network each of the pipeline's module files holds: the converter's class for it, and how many inputs its
// forward needs. A file copied over another's (a VAE decoder as unet.pt) is refused when it loads, not with
// TorchScript's message at its first call.
struct ModuleKind {
  const char* file;
  const char* network;
  const char* class_name;
  size_t inputs;
};
constexpr ModuleKind kModuleKinds[] = {
    {"unet.pt", "a U-Net", "UNet2DConditionModel", 3},
    {"text_encoder.pt", "a CLIP text encoder", "CLIPTextModel", 1},
    {"vae_decoder.pt", "a VAE decoder", "VAEDecoder", 1},
    {"vae_encoder.pt", "a VAE encoder", "VAEEncoder", 1},
    {"taesd_decoder.pt", "a TAESD decoder", "TAESDDecoder", 1},
};

// Why `module`, read from `file`, is not the network the file stands for; empty where it is (or the file is none of
// kModuleKinds). A module of another exporter than the converter is judged by its inputs alone.
std::string wrong_network(const torch::jit::Module& module, const std::string& file) {
  const auto kind = std::find_if(std::begin(kModuleKinds), std::end(kModuleKinds),
                                 [&](const ModuleKind& k) { return file == k.file; });
  if (kind == std::end(kModuleKinds)) return "";
  const std::string type = module.type()->name()->qualifiedName();
  const std::string converters = "__torch__.txt2img_convert.";
  const std::string class_name = type.substr(type.rfind('.') + 1);
  if (type.rfind(converters, 0) == 0 && class_name != kind->class_name)
    return "it holds a " + class_name + ", not " + kind->network + " (" + kind->class_name + ")";
  const auto forward = module.find_method("forward");
  if (!forward) return "it has no forward method";
  const auto& arguments = forward->function().getSchema().arguments();
  const auto inputs = std::count_if(arguments.begin() + 1, arguments.end(),
                                    [](const c10::Argument& a) { return !a.default_value().has_value(); });
  if (static_cast<size_t>(inputs) != kind->inputs)
    return "its forward takes " + std::to_string(inputs) + " inputs where " + kind->network + "'s takes " +
           std::to_string(kind->inputs);
  return "";
}
const std::vector<std::string> kRequiredFiles = {"text_encoder.pt", "unet.pt", "vae_decoder.pt", "tokenizer.model"};

// "1.13.0a0" -> {1, 13}; anything unparsable -> {0, 0}.
std::pair<int, int> major_minor(const std::string& version) {
  int major = 0, minor = 0;
  char dot = 0;
  std::istringstream in(version);
  in >> major >> dot >> minor;
  return in.fail() && !in.eof() ? std::pair<int, int>{0, 0} : std::pair<int, int>{major, minor};
}

template <typename T>
T field(const nlohmann::json& j, const char* name, const std::string& where) {
  if (!j.contains(name)) throw Error(ErrorKind::Bundle, where + ": model.json has no \"" + name + "\"" + kConvertHint);
  try {
    return j.at(name).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorKind::Bundle, where + ": model.json field \"" + name + "\" has the wrong type" + kConvertHint);
  }
}

// An integer field that must lie in [low, high]: a hand-edited or damaged value would otherwise reach the pipeline as a
// division by zero or a raw LibTorch shape error.
int int_field(const nlohmann::json& j, const char* name, const std::string& where, int low, int high,
              const std::string& why = "") {
  const int value = field<int>(j, name, where);
  if (value < low || value > high)
    throw Error(ErrorKind::Bundle,
                where + ": model.json field \"" + name + "\" is " + std::to_string(value) +
                    (low == high ? ", not " + std::to_string(low)
                                 : ", not from " + std::to_string(low) + " to " + std::to_string(high)) +
                    why + kConvertHint);
  return value;
}

SchedulerConfig scheduler_from_json(const nlohmann::json& j, const std::string& where) {
  SchedulerConfig c;
  c.num_train_timesteps = int_field(j, "num_train_timesteps", where, 2, 1000000);
  c.beta_start = field<double>(j, "beta_start", where);
  c.beta_end = field<double>(j, "beta_end", where);
  c.beta_schedule = field<std::string>(j, "beta_schedule", where);
  c.steps_offset = field<int>(j, "steps_offset", where);
  c.timestep_spacing = field<std::string>(j, "timestep_spacing", where);
  c.prediction_type = field<std::string>(j, "prediction_type", where);
  c.set_alpha_to_one = field<bool>(j, "set_alpha_to_one", where);
  if (j.contains("rescale_betas_zero_snr")) c.rescale_betas_zero_snr = field<bool>(j, "rescale_betas_zero_snr", where);
  return c;
}

SafetyConfig safety_from_json(const nlohmann::json& j, const std::string& where) {
  SafetyConfig c;
  c.shortest_edge = field<int>(j, "shortest_edge", where);
  c.crop_height = field<int>(j, "crop_height", where);
  c.crop_width = field<int>(j, "crop_width", where);
  c.rescale_factor = field<double>(j, "rescale_factor", where);
  c.mean = field<std::array<double, 3>>(j, "mean", where);
  c.std = field<std::array<double, 3>>(j, "std", where);
  return c;
}

}  // namespace

std::string add_lora_again(const std::filesystem::path& dir) {
  return "scripts/add_lora.py " + dir.string() + " FILE --overwrite";
}

bool attends_through_sdpa(const Manifest& manifest) { return major_minor(manifest.torch_version).first >= 2; }

std::string libtorch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

// A function-try-block: a field of the wrong type (nlohmann's type errors) is a corrupt manifest like any other.
Manifest Manifest::from_json(const nlohmann::json& j, const std::string& where) try {
  Manifest m;
  m.raw = j;
  if (j.value("format", "") != "txt2img-bundle")
    throw Error(ErrorKind::Bundle, where + ": model.json is not a txt2img bundle manifest" + kConvertHint);
  m.format_version = field<int>(j, "format_version", where);
  if (m.format_version < 1 || m.format_version > kBundleFormatVersion)
    throw Error(ErrorKind::Bundle, where + ": bundle format version " + std::to_string(m.format_version) +
                                       " is not one this binary reads (1 to " + std::to_string(kBundleFormatVersion) +
                                       "); re-convert it with this release's scripts/convert.py");
  m.family = field<std::string>(j, "family", where);
  if (m.family != "sd1")
    throw Error(ErrorKind::Bundle, where + ": model family \"" + m.family + "\" is not supported (only sd1)");
  m.latent_channels = int_field(j, "latent_channels", where, 4, 4, " (SD 1.x latents have 4 channels)");
  m.scale_factor = field<double>(j, "scale_factor", where);
  if (!(m.scale_factor > 0 && std::isfinite(m.scale_factor)))
    throw Error(ErrorKind::Bundle, where + ": model.json field \"scale_factor\" is " + j.at("scale_factor").dump() +
                                       ", not a positive number" + kConvertHint);
  m.vae_scale_factor = int_field(j, "vae_scale_factor", where, 1, 64);
  if ((m.vae_scale_factor & (m.vae_scale_factor - 1)) != 0)
    throw Error(ErrorKind::Bundle, where + ": model.json field \"vae_scale_factor\" must be a power of two" +
                                       kConvertHint);
  const int multiple = std::max(8, m.vae_scale_factor);
  m.default_size = int_field(j, "default_size", where, multiple, kMaxImageSide);
  if (m.default_size % multiple != 0)
    throw Error(ErrorKind::Bundle, where + ": model.json field \"default_size\" must be a multiple of " +
                                       std::to_string(multiple) + kConvertHint);
  m.context_length = int_field(j, "context_length", where, 3, 1024);
  m.pad_id = int_field(j, "pad_id", where, 0, kClipVocabulary - 1);
  m.text_hidden_size = int_field(j, "text_hidden_size", where, 1, 1 << 16);
  m.guidance_embedding_dim = j.value("guidance_embedding_dim", 0);
  if (j.contains("inpainting")) m.inpainting = field<bool>(j, "inpainting", where);
  if (j.contains("text_num_layers")) {  // written since --clip-skip; older bundles are SD v1's 12 layers
    m.text_num_layers = field<int>(j, "text_num_layers", where);
    m.text_num_layers_known = true;
    if (m.text_num_layers < 1)
      throw Error(ErrorKind::Bundle,
                  where + ": model.json field \"text_num_layers\" must be at least 1" + kConvertHint);
  }
  const auto scheduler = field<nlohmann::json>(j, "scheduler", where);
  m.scheduler = scheduler_from_json(scheduler, where);
  const auto optional_string = [&](const char* name) {
    return scheduler.contains(name) && !scheduler.at(name).is_null() ? field<std::string>(scheduler, name, where)
                                                                      : std::string();
  };
  m.source_scheduler_class = optional_string("class");
  m.source_sampler = optional_string("sampler");
  if (j.contains("safety") && !j.at("safety").is_null()) m.safety = safety_from_json(j.at("safety"), where);
  const auto files = field<nlohmann::json>(j, "files", where);
  for (const auto& [name, info] : files.items()) {
    // Every file is the bundle's own: a model.json from elsewhere must not make a run read files outside it.
    const std::filesystem::path path(name);
    if (name.empty() || path.is_absolute() || std::find(path.begin(), path.end(), "..") != path.end())
      throw Error(ErrorKind::Bundle, where + ": model.json lists the file \"" + name +
                                         "\", which is not inside the bundle's folder" + kConvertHint);
    m.files.push_back({name, field<std::string>(info, "sha256", where), field<uint64_t>(info, "bytes", where)});
  }
  m.converter_version = field<std::string>(j, "converter_version", where);
  m.torch_version = field<std::string>(j, "torch_version", where);
  m.model_name = j.value("model_name", "");
  m.model_hash = j.value("model_hash", "");
  m.vae_name = j.value("vae_name", "");
  m.vae_hash = j.value("vae_hash", "");
  m.taesd_name = j.value("taesd_name", "");
  m.taesd_hash = j.value("taesd_hash", "");
  const auto source = j.value("source", nlohmann::json::object());
  if (source.is_object()) {
    for (const auto& lora : source.value("loras", nlohmann::json::array()))
      if (lora.contains("a1111_hash") && lora.contains("path"))
        m.lora_hashes.emplace_back(std::filesystem::path(lora["path"].get<std::string>()).stem().string(),
                                   lora["a1111_hash"].get<std::string>());
    for (const auto& e : source.value("embeddings", nlohmann::json::array()))
      if (e.contains("name") && e.contains("sha256"))
        m.embedding_hashes[e["name"].get<std::string>()] = e["sha256"].get<std::string>().substr(0, 12);
  }
  for (const auto& e : j.value("embeddings", nlohmann::json::array())) {
    TextualInversion embedding{field<std::string>(e, "name", where), field<int>(e, "first_id", where),
                               field<int>(e, "vectors", where),
                               e.contains("added_token") && field<bool>(e, "added_token", where)};
    if (embedding.first_id < kClipVocabulary || embedding.vectors < 1)
      throw Error(ErrorKind::Bundle, where + ": model.json embedding \"" + embedding.name + "\" has first_id " +
                                         std::to_string(embedding.first_id) + " and " +
                                         std::to_string(embedding.vectors) + " vectors" + kConvertHint);
    m.embeddings.push_back(embedding);
  }
  for (const auto& l : j.value("loras", nlohmann::json::array()))
    m.loras.push_back({field<std::string>(l, "name", where), field<std::string>(l, "file", where),
                       l.value("a1111_hash", "")});
  std::sort(m.loras.begin(), m.loras.end(), [](const LoraFile& a, const LoraFile& b) { return a.name < b.name; });
  return m;
} catch (const nlohmann::json::exception& e) {
  throw Error(ErrorKind::Bundle, where + ": model.json is corrupt (" + e.what() + ")" + kConvertHint);
}

const LoraFile* Manifest::find_lora(const std::string& name) const {
  const auto it = std::find_if(loras.begin(), loras.end(), [&](const LoraFile& l) { return l.name == name; });
  return it == loras.end() ? nullptr : &*it;
}

Bundle Bundle::open(const std::filesystem::path& dir) {
  const std::string where = "model bundle " + dir.string();
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw Error(ErrorKind::Bundle, where + (std::filesystem::exists(dir, ec)
                                                ? ": not a directory (a bundle is the folder scripts/convert.py "
                                                  "writes; a checkpoint file must be converted first)"
                                                : ": not found") +
                                       kConvertHint);
  const auto manifest_file = dir / "model.json";
  if (!std::filesystem::exists(manifest_file, ec))
    throw Error(ErrorKind::Bundle, where + (ec ? ": cannot read model.json: " + ec.message()
                                               : ": model.json missing" + std::string(kConvertHint)));
  if (!std::filesystem::is_regular_file(manifest_file, ec))
    throw Error(ErrorKind::Bundle, where + ": model.json is not a file" + kConvertHint);
  std::ifstream in(manifest_file);
  if (!in) throw Error(ErrorKind::Bundle, where + ": cannot read model.json: " + std::strerror(errno));
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Bundle, where + ": model.json is corrupt (" + e.what() + ")" + kConvertHint);
  }

  Bundle b;
  b.dir_ = dir;
  b.manifest_ = Manifest::from_json(j, where);
  std::vector<std::string> required = kRequiredFiles;
  if (b.manifest_.inpainting) required.push_back("vae_encoder.pt");
  for (const auto& file : required)
    if (!b.lists(file))
      throw Error(ErrorKind::Bundle,
                  where + ": model.json does not list " + file +
                      (file == "vae_encoder.pt" ? ", which makes an inpainting model's masked image" : "") +
                      kConvertHint);
  for (const auto& lora : b.manifest_.loras)
    if (!b.lists(lora.file))
      throw Error(ErrorKind::Bundle, where + ": model.json's LoRA \"" + lora.name + "\" names " + lora.file +
                                         ", which it does not list among the files; add the LoRA again with " +
                                         add_lora_again(dir));
  for (const auto& f : b.manifest_.files) {
    const auto p = dir / f.name;
    if (!std::filesystem::is_regular_file(p, ec)) {
      if (ec && ec != std::errc::no_such_file_or_directory)
        throw Error(ErrorKind::Bundle, where + ": cannot read " + f.name + ": " + ec.message());
      // The safety checker, TAESD or a LoRA deleted to save space: the bundle works without it, and a run that
      // needs it says so.
      if (std::find(required.begin(), required.end(), f.name) == required.end()) {
        b.absent_.insert(f.name);
        continue;
      }
      throw Error(ErrorKind::Bundle, where + ": " + f.name + " missing" + kConvertHint);
    }
    const auto bytes = std::filesystem::file_size(p, ec);
    if (ec) throw Error(ErrorKind::Bundle, where + ": cannot read " + f.name + ": " + ec.message());
    if (bytes != f.bytes)
      throw Error(ErrorKind::Bundle, where + ": " + f.name + " has " + std::to_string(bytes) +
                                         " bytes, model.json says " + std::to_string(f.bytes) +
                                         " (truncated or replaced)" + kConvertHint);
  }

  const auto exported = major_minor(b.manifest_.torch_version);
  const auto ours = major_minor(libtorch_version());
  if (exported > ours)
    throw Error(ErrorKind::Bundle,
                where + " was exported by PyTorch " + b.manifest_.torch_version + ", newer than this binary's LibTorch " +
                    libtorch_version() + ", which cannot read its TorchScript; re-export it with PyTorch " +
                    std::to_string(ours.first) + "." + std::to_string(ours.second) +
                    " (TXT2IMG_PYTHON=<that python> scripts/convert.py ...) or build txt2img against a newer LibTorch");
  return b;
}

bool Bundle::lists(const std::string& file) const {
  const auto& files = manifest_.files;
  return std::any_of(files.begin(), files.end(), [&](const BundleFile& f) { return f.name == file; });
}

bool Bundle::has(const std::string& file) const { return lists(file) && !absent_.count(file); }

std::vector<std::string> Bundle::corrupt_files() const {
  std::vector<std::string> corrupt;
  for (const auto& f : manifest_.files)
    if (has(f.name) && sha256_file(path(f.name)) != f.sha256) corrupt.push_back(f.name);
  return corrupt;
}

Tokenizer Bundle::load_tokenizer() const {
  auto tokenizer = Tokenizer::load(path("tokenizer.model"));
  try {
    tokenizer.add_embeddings(manifest_.embeddings);
  } catch (const Error& e) {
    throw Error(ErrorKind::Bundle, "model bundle " + dir_.string() + ": " + e.what());
  }
  return tokenizer;
}

torch::jit::Module Bundle::load_module(const std::string& file, torch::Device device) const {
  torch::jit::Module module;
  try {
    module = torch::jit::load(path(file).string(), device);
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    what = what.substr(0, what.find('\n'));
    throw Error(ErrorKind::Bundle, "model bundle " + dir_.string() + ": cannot load " + file + " (" + what + ")" +
                                       kConvertHint);
  }
  if (const std::string why = wrong_network(module, file); !why.empty())
    throw Error(ErrorKind::Bundle, "model bundle " + dir_.string() + ": " + file +
                                       " is not the module it should be: " + why + kConvertHint);
  return module;
}

}  // namespace txt2img
