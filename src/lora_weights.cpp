#include "lora_weights.hpp"

#include <map>
#include <set>

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

}  // namespace

void LoraWeights::apply(const std::vector<LoraUse>& uses, const Manifest& manifest, torch::jit::Module& text_encoder,
                        torch::jit::Module& unet) {
  if (uses == applied_) return;
  restore(text_encoder, unet);
  torch::NoGradGuard no_grad;
  try {
    auto params = parameters(text_encoder, unet);
    std::map<std::string, torch::Tensor> sums;  // float32, on the parameter's device
    for (const auto& use : uses) {
      const LoraFile* lora = manifest.find_lora(use.name);
      if (!lora) throw Error(ErrorKind::Bundle, "the model bundle has no LoRA named \"" + use.name + "\"");
      const auto path = bundle_dir_ / lora->file;
      const auto file = SafeTensors::open(path);
      std::set<std::string> keys;
      for (const auto& k : file.keys()) keys.insert(k.substr(0, k.rfind('.')));
      for (const auto& key : keys) {
        const bool unet_key = key.rfind("unet.", 0) == 0;
        const double weight = unet_key ? use.unet_weight : use.te_weight;
        if (weight == 0) continue;  // exactly the weights without this LoRA, as convert.py --lora ...:0 leaves them
        const auto param = params.find(key);
        if (param == params.end())
          throw Error(ErrorKind::Bundle, path.string() + " changes " + key +
                                             ", which is no weight of this model; add the LoRA again with "
                                             "scripts/add_lora.py " + bundle_dir_.string() + " FILE --overwrite");
        const auto change = delta(file, key).to(param->second.device());
        if (change.numel() != param->second.numel())
          throw Error(ErrorKind::Bundle, path.string() + " changes " + key + " by " +
                                             std::to_string(change.numel()) + " values, the weight has " +
                                             std::to_string(param->second.numel()) +
                                             "; add the LoRA again with scripts/add_lora.py " +
                                             bundle_dir_.string() + " FILE --overwrite");
        auto& sum = sums[key];
        if (!sum.defined()) sum = param->second.to(torch::kFloat32);
        sum = sum + weight * change.reshape(param->second.sizes());
      }
    }
    for (const auto& [key, sum] : sums) {
      auto& param = params.at(key);
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
