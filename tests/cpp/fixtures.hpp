// Fixture bundles for tests: where they are, and private copies a test may damage.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

inline std::filesystem::path fixtures() { return std::getenv("TXT2IMG_FIXTURES"); }

// A private copy of a fixture bundle (the tiny one unless named) that a test may damage.
class BundleCopy {
 public:
  explicit BundleCopy(const std::string& bundle = "tiny")
      : dir_(std::filesystem::temp_directory_path() / ("txt2img_bundle_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    std::filesystem::copy(fixtures() / bundle, dir_, std::filesystem::copy_options::recursive);
  }
  ~BundleCopy() { std::filesystem::remove_all(dir_); }
  const std::filesystem::path& dir() const { return dir_; }

  nlohmann::json manifest() const {
    nlohmann::json j;
    std::ifstream(dir_ / "model.json") >> j;
    return j;
  }
  void set_manifest(const nlohmann::json& j) const { std::ofstream(dir_ / "model.json") << j.dump(1); }

 private:
  std::filesystem::path dir_;
};
