// txt2img info: what a PNG records about how it was made, or what a model bundle holds.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

#include "cli/commands.hpp"
#include "cli/metadata.hpp"
#include "cli/output_pattern.hpp"
#include "cli/rerun_command.hpp"
#include "cli/shell_text.hpp"
#include "join.hpp"
#include "txt2img/bundle.hpp"
#include "txt2img/error.hpp"
#include "txt2img/png.hpp"

namespace txt2img::cli {
namespace {

// A field of an object in model.json's "source" as text: a string as it is, a number or boolean as JSON writes it,
// "" for anything else. The record is informative only; a hand-edited value of another type is no corruption.
std::string source_text(const nlohmann::json& object, const char* key) {
  if (!object.is_object() || !object.contains(key)) return "";
  const auto& value = object[key];
  if (value.is_string()) return value.get<std::string>();
  return value.is_number() || value.is_boolean() ? value.dump() : "";
}

// Where the weights came from, and the LoRAs merged into them (model.json "source", written by convert.py).
void print_source(const nlohmann::json& source) {
  const std::string kind = source_text(source, "kind"), path = source_text(source, "path");
  // A checkpoint saved without its text encoder took that of convert.py's --config.
  const std::string text_from =
      source.is_object() && source.contains("text_encoder") ? source_text(source["text_encoder"], "path") : "";
  if (!kind.empty())
    std::cout << "  source         " << kind << (path.empty() ? "" : " " + path)
              << (source_text(source, "ema") == "true" ? " (its U-Net's moving average, convert.py --ema)" : "")
              << (text_from.empty() ? "" : " (its text encoder from " + text_from + ")") << "\n";
  if (!source.is_object() || !source.contains("loras") || !source["loras"].is_array()) return;
  const auto or_unknown = [](const std::string& text) { return text.empty() ? std::string("?") : text; };
  for (const auto& lora : source["loras"]) {
    std::cout << "  LoRA merged    " << std::filesystem::path(or_unknown(source_text(lora, "path"))).filename().string()
              << " (weight " << or_unknown(source_text(lora, "weight")) << ", "
              << or_unknown(source_text(lora, "modules")) << " modules)\n";
  }
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) value /= 1024, ++unit;
  char buf[32];
  std::snprintf(buf, sizeof buf, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return buf;
}

int bundle_info(const InfoOptions& o) {
  if (o.command)
    throw Error(ErrorKind::Usage,
                "--command applies to a PNG (made by txt2img or AUTOMATIC1111), not to a model bundle");
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::path(o.path) / "model.json", ec))
    for (const auto& entry : std::filesystem::directory_iterator(o.path, ec))
      if (ends_with_png(entry.path().filename().string()) && entry.is_regular_file(ec))
        throw Error(ErrorKind::Usage, o.path + " is a folder of images, not a model bundle (it has no model.json): " +
                                          "info reads one image at a time (txt2img info " + entry.path().string() +
                                          ")");
  const Bundle bundle = Bundle::open(o.path);
  const Manifest& m = bundle.manifest();
  const std::vector<std::string> corrupt = o.verify ? bundle.corrupt_files() : std::vector<std::string>{};
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : m.files) {
    nlohmann::json file = {{"name", f.name}, {"bytes", f.bytes}, {"sha256", f.sha256}};
    if (!bundle.has(f.name))
      file["missing"] = true;
    else if (o.verify)
      file["verified"] = std::find(corrupt.begin(), corrupt.end(), f.name) == corrupt.end();
    files.push_back(file);
  }

  if (o.json) {
    std::cout << nlohmann::json{{"path", o.path}, {"manifest", m.raw}, {"files", files}}.dump(
                     2, ' ', false, nlohmann::json::error_handler_t::replace)
              << std::endl;
  } else {
    std::cout << "model bundle " << o.path << "\n"
              << "  model          " << (m.model_name.empty() ? "(unnamed)" : m.model_name)
              << (m.model_hash.empty() ? "" : " [" + m.model_hash + "]") << "\n"
              << (m.vae_name.empty() ? "" : "  VAE            " + m.vae_name + " [" + m.vae_hash + "] (replaces the model's)\n")
              << "  family         " << m.family << ", bundle format " << m.format_version << "\n"
              << "  default size   " << m.default_size << "x" << m.default_size << "\n"
              << "  safety checker "
              << (bundle.has("safety_checker.pt")     ? "included"
                  : bundle.lists("safety_checker.pt") ? "deleted (generate with --no-safety-checker)"
                                                      : "none (generate with --no-safety-checker)")
              << "\n"
              << "  TAESD decoder  "
              << (bundle.lists("taesd_decoder.pt") && !bundle.has("taesd_decoder.pt") ? "deleted"
                  : !bundle.has("taesd_decoder.pt") ? "none (convert.py --taesd adds one for --decoder taesd)"
                  : m.taesd_name.empty()            ? "included"
                                                    : m.taesd_name + " [" + m.taesd_hash + "]")
              << "\n"
              << "  scheduler      "
              << (m.source_scheduler_class.empty() ? "none of its own (random weights, or a single file without "
                                                     "--config)"
                  : m.source_sampler.empty()        ? m.source_scheduler_class + " (no txt2img sampler computes it)"
                                                    : m.source_scheduler_class + ": --sampler model runs it as " +
                                                          m.source_sampler)
              << "\n"
              << "  training       " << m.scheduler.prediction_type << " prediction"
              << (m.scheduler.rescale_betas_zero_snr
                      ? ", zero terminal SNR (every sampler on its " + m.scheduler.timestep_spacing + " spacing)"
                      : "")
              << "\n"
              << "  text encoder   " << m.text_num_layers << " layers" << (m.text_num_layers_known ? "" : " (assumed)")
              << ", --clip-skip 1 to " << m.text_num_layers << "\n"
              << (m.guidance_embedding_dim > 0 ? "  guidance       an input of the U-Net (LCM-distilled: --sampler lcm, 2 "
                                                 "to 8 steps; no negative prompt)\n"
                                               : "")
              << (m.inpainting ? "  inpainting     its U-Net also takes a mask and a masked image; txt2img masks the "
                                 "whole image\n"
                               : "")
              << "  converted by   txt2img " << m.converter_version << " with PyTorch " << m.torch_version << "\n";
    for (const auto& e : m.embeddings)
      std::cout << "  embedding      " << e.name << " (" << e.vectors << (e.vectors == 1 ? " vector)\n" : " vectors)\n");
    for (const auto& l : m.loras)
      std::cout << "  LoRA           " << l.name << (l.a1111_hash.empty() ? "" : " [" + l.a1111_hash + "]")
                << (bundle.has(l.file) ? ", added by a prompt's <lora:" + l.name + ":WEIGHT>"
                                       : ", deleted (add it again with " + add_lora_again(o.path) + ")")
                << "\n";
    print_source(m.raw.value("source", nlohmann::json::object()));
    std::cout << "  files\n";
    size_t name_width = 0;
    for (const auto& f : m.files) name_width = std::max(name_width, f.name.size());
    for (const auto& f : files) {
      const auto name = f["name"].get<std::string>();
      const auto size = human_bytes(f["bytes"].get<uint64_t>());
      const size_t size_width = 10;  // "999.9 KiB", right-aligned
      std::cout << "    " << name << std::string(name_width - name.size(), ' ')
                << std::string(size_width - std::min(size_width, size.size()), ' ') << size << "  sha256 "
                << f["sha256"].get<std::string>();
      if (f.contains("missing")) std::cout << "  MISSING (deleted; runs that need it say so)";
      if (f.contains("verified")) std::cout << (f["verified"].get<bool>() ? "  ok" : "  MISMATCH");
      std::cout << "\n";
    }
    std::cout << std::flush;
  }
  if (!corrupt.empty()) {
    throw Error(ErrorKind::Bundle, "model bundle " + o.path + ": " + join(corrupt) +
                                       (corrupt.size() == 1 ? " does" : " do") +
                                       " not match the sha256 in model.json (corrupt); convert the model again");
  }
  return 0;
}

int png_info(const InfoOptions& o) {
  if (o.verify)
    throw Error(ErrorKind::Usage, "--verify applies to a model bundle (its files' sha256), not to a PNG");
  // "-", as for prompt files: `curl ... | txt2img info -`.
  const bool from_stdin = o.path == "-";
  const std::string name = from_stdin ? "<stdin>" : o.path;  // in messages
  if (from_stdin && isatty(STDIN_FILENO))
    throw Error(ErrorKind::Usage,
                "info - reads a PNG from standard input, which is a terminal; pipe the image into it "
                "(txt2img info - < IMAGE.png) or name its file");
  const PngInfo png = from_stdin ? read_png_info(std::cin, name) : read_png_info(o.path);
  std::optional<std::string> parameters;
  std::optional<nlohmann::ordered_json> reproduction;
  std::string damaged;  // why the txt2img text cannot be read, where it cannot
  nlohmann::ordered_json other = nlohmann::ordered_json::object();
  for (const auto& [key, value] : png.text) {
    if (key == "parameters") {
      parameters = value;
    } else if (key == "txt2img") {
      // txt2img's record nests three deep; a far deeper one would overflow the stack of nlohmann's recursive dump.
      bool too_deep = false;
      const auto depth_limit = [&too_deep](int depth, nlohmann::ordered_json::parse_event_t, nlohmann::ordered_json&) {
        too_deep |= depth > 32;
        return !too_deep;
      };
      reproduction = nlohmann::ordered_json::parse(value, depth_limit, false);
      if (too_deep || reproduction->is_discarded() || !reproduction->is_object()) {
        // A damaged record (an editor's or a transfer's) hides nothing else: shown as the text it is.
        damaged = name + ": its txt2img text is not a valid JSON object";
        reproduction.reset();
        other[key] = value;
      }
    } else {
      other[key] = value;
    }
  }
  // A text chunk that cannot be read is passed over, as Pillow (and so A1111) passes it over, but said: a damaged
  // "parameters" chunk would otherwise look like an image without any.
  for (const auto& why : png.unread) std::cerr << "warning: " << one_line(name + ": " + why) << "; not read\n";
  if (!damaged.empty() && !o.command) std::cerr << "warning: " << printable(damaged) << " (damaged?); shown as text\n";

  if (o.command) {
    std::optional<std::string> command;
    if (reproduction) {
      try {
        command = rerun_command(*reproduction, name);
      } catch (const Error& e) {
        if (!parameters) throw;
        damaged = e.what();
      }
    }
    if (!command && !damaged.empty() && !parameters) throw Error(ErrorKind::Io, damaged);
    if (!command && parameters) {
      if (!damaged.empty())
        std::cerr << printable(damaged) << ": the command is read from its A1111 parameters instead\n";
      std::cout << a1111_command(*parameters) << std::endl;
      return 0;
    }
    if (!command)
      throw Error(ErrorKind::Io, name +
                                     ": no txt2img or A1111 metadata (made by another program, or with "
                                     "--no-metadata), so no command to make it again");
    const auto& model = reproduction->contains("model") ? reproduction->at("model") : nlohmann::ordered_json();
    const auto text = [&](const char* key) {
      return model.is_object() && model.contains(key) && model[key].is_string() ? model[key].get<std::string>()
                                                                                : std::string();
    };
    std::cerr << "made " << printable(model_hint(text("name"), text("hash")));
    std::cout << *command << std::endl;
    return 0;
  }
  if (o.json) {
    std::cout << nlohmann::ordered_json{{"path", o.path},
                                        {"width", png.width},
                                        {"height", png.height},
                                        {"parameters", parameters ? nlohmann::ordered_json(*parameters) : nullptr},
                                        {"txt2img", reproduction ? *reproduction : nullptr},
                                        {"text", other},
                                        {"unread", png.unread}}
                     .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << std::endl;
    return 0;
  }
  std::cout << name << ": " << png.width << "x" << png.height << " PNG\n";
  if (!parameters && !reproduction) std::cout << "no generation parameters recorded\n";
  if (parameters) std::cout << "\nparameters:\n" << printable(*parameters) << "\n";
  if (reproduction) std::cout << "\ntxt2img:\n" << printable(reproduction->dump(2)) << "\n";
  for (const auto& [key, value] : other.items())
    std::cout << "\n" << printable(key) << ":\n" << printable(value.get<std::string>()) << "\n";
  std::cout << std::flush;
  return 0;
}

}  // namespace

int run_info(const InfoOptions& o) {
  std::error_code ec;
  return std::filesystem::is_directory(o.path, ec) ? bundle_info(o) : png_info(o);
}

}  // namespace txt2img::cli
