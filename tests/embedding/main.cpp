// The embedding check's host program (configured, not built): the public API is all it includes.
#include <txt2img/bundle.hpp>
#include <txt2img/pipeline.hpp>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  auto pipeline = txt2img::Pipeline::load(txt2img::Bundle::open(argv[1]), {});
  return pipeline.manifest().latent_channels > 0 ? 0 : 1;
}
