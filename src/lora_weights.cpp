#include "lora_weights.hpp"

#include <map>
#include <set>
#include <utility>

#include "txt2img/error.hpp"
#include "txt2img/safetensors.hpp"

namespace txt2img {
namespace {

// The modules' parameters under the names the packed files use: "<part>.<parameter name>".
std::map<std::string, torch::Tensor> parameters(torch::jit::Module& text_encoder, torch::jit::Module& unet) {
  std::map<std::string, torch::Tensor> found;
  for (auto [part, module] : {std::pair<const char*, torch::jit::Module*>{"text_encoder", &text_encoder},
                              {"unet", &unet}})
    for (const auto& p : module->named_parameters(/*recurse=*/true)) found[std::string(part) + "." + p.name] = p.value;
  return found;
}

// A packed file holds, for each weight it changes, either a low-rank pair and its scale (<key>.up [out, r],
// <key>.down [r, in*kh*kw], <key>.scale) or the whole change (<key>.diff); the change is scale * (up @ down).
torch::Tensor delta(const SafeTensors& file, const std::string& key) {
  if (file.contains(key + ".diff")) return file.get(key + ".diff").to(torch::kFloat32);
  const auto up = file.get(key + ".up").to(torch::kFloat32);
  const auto down = file.get(key + ".down").to(torch::kFloat32);
  return file.get(key + ".scale").item<double>() * torch::mm(up, down);
}

bool has_change(const SafeTensors& file, const std::string& key) {
  return file.contains(key + ".diff") || file.contains(key + ".up");
}

// scripts/add_lora.py packed the file into the bundle: one it cannot read or multiply out (damaged after packing, a
// header of the wrong shapes) is the bundle's fault, named with the way to pack it again.
template <typename Read>
auto from_lora_file(const std::filesystem::path& path, const std::filesystem::path& bundle_dir, Read&& read)
    -> decltype(read()) {
  const auto unusable = [&](const std::string& why) {
    return Error(ErrorKind::Bundle, path.string() + " cannot be used (" + why + "); add the LoRA again with " +
                                        add_lora_again(bundle_dir));
  };
  try {
    return read();
  } catch (const Error& e) {
    std::string why = e.what();
    if (const std::string named = path.string() + ": "; why.rfind(named, 0) == 0) why.erase(0, named.size());
    throw unusable(why);
  } catch (const c10::Error& e) {
    if (is_out_of_memory(e)) throw backend_failure(e);  // the run's size, not the file
    throw unusable(backend_failure(e).what());
  }
}

double weight_of(const LoraUse& use, const std::string& key) {
  return key.rfind("unet.", 0) == 0 ? use.unet_weight : use.te_weight;
}

}  // namespace

void LoraWeights::apply(const std::vector<LoraUse>& uses, const Manifest& manifest, torch::jit::Module& text_encoder,
                        torch::jit::Module& unet) {
  if (uses == applied_) return;
  restore(text_encoder, unet);
  torch::NoGradGuard no_grad;
  try {
    auto params = parameters(text_encoder, unet);
    // Every change is checked before any weight changes: the files, then the weights they name.
    std::vector<std::pair<std::filesystem::path, SafeTensors>> files;
    std::set<std::string> keys;  // "<part>.<parameter>" that some LoRA of `uses` changes with a non-zero weight
    for (const auto& use : uses) {
      const LoraFile* lora = manifest.find_lora(use.name);
      if (!lora) throw Error(ErrorKind::Bundle, "the model bundle has no LoRA named \"" + use.name + "\"");
      const auto path = bundle_dir_ / lora->file;
      files.emplace_back(path, from_lora_file(path, bundle_dir_, [&] { return SafeTensors::open(path); }));
      for (const auto& k : files.back().second.keys()) {
        const std::string key = k.substr(0, k.rfind('.'));
        if (weight_of(use, key) == 0) continue;  // exactly the weights without it, as convert.py leaves them
        if (!params.count(key))
          throw Error(ErrorKind::Bundle, path.string() + " changes " + key +
                                             ", which is no weight of this model; add the LoRA again with " +
                                             add_lora_again(bundle_dir_));
        keys.insert(key);
      }
    }
    // One weight at a time, so that besides the originals only one float32 sum is ever held.
    for (const auto& key : keys) {
      auto& param = params.at(key);
      torch::Tensor sum = param.to(torch::kFloat32);
      for (size_t i = 0; i < uses.size(); ++i) {
        const auto& [path, file] = files[i];
        const double weight = weight_of(uses[i], key);
        if (weight == 0 || !has_change(file, key)) continue;
        const auto change = from_lora_file(path, bundle_dir_, [&] { return delta(file, key); }).to(param.device());
        if (change.numel() != param.numel())
          throw Error(ErrorKind::Bundle, path.string() + " changes " + key + " by " + std::to_string(change.numel()) +
                                             " values, the weight has " + std::to_string(param.numel()) +
                                             "; add the LoRA again with " + add_lora_again(bundle_dir_));
        sum = sum + weight * change.reshape(param.sizes());
      }
      originals_[key] = param.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);
      param.copy_(sum);
    }
    applied_ = uses;
  } catch (...) {
    restore(text_encoder, unet);
    throw;
  }
}

void LoraWeights::restore(torch::jit::Module& text_encoder, torch::jit::Module& unet) {
  torch::NoGradGuard no_grad;
  if (!originals_.empty()) {
    auto params = parameters(text_encoder, unet);
    for (const auto& [key, original] : originals_) params.at(key).copy_(original);
  }
  originals_.clear();
  applied_.clear();
}

}  // namespace txt2img
