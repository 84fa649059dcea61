// The txt2img command that makes an image again: from its txt2img metadata record, or from AUTOMATIC1111's
// infotext as A1111 generated it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace txt2img::cli {

// The command line that makes the image of a txt2img metadata record again (with the same model bundle, which the
// record names but cannot locate). Throws Error(Io) naming `path` for a record that lacks what a command needs.
std::string rerun_command(const nlohmann::ordered_json& record, const std::string& path);

// The command line that reads an AUTOMATIC1111 image's infotext as A1111 generated it (emphasis and long prompts on,
// A1111's sampler names); on stderr what it leaves out: the model, settings txt2img has no equivalent for, and the
// noise, which A1111 draws on the GPU unless its infotext says "RNG: CPU".
std::string a1111_command(const std::string& text);

// What a command cannot say, as a line for stderr: which model bundle, as a folder, holds the model an image was
// made with.
std::string model_hint(const std::string& name, const std::string& hash);

}  // namespace txt2img::cli
