// The caller's Observer as the pipeline calls it: whatever it throws comes out of Pipeline::generate as it was
// thrown, past the handlers that turn LibTorch's exceptions into Error(Runtime), so that a host cancels a run with an
// exception of its own (the CLI throws Error(Interrupted)).
#pragma once

#include <exception>
#include <string>
#include <vector>

#include "txt2img/pipeline.hpp"

namespace txt2img {

// What the forwarding observer throws for the caller's exception: no std::exception, so that no handler on the way
// mistakes it for LibTorch's.
struct ObserverThrew {
  std::exception_ptr thrown;
};

class ForwardedObserver : public Observer {
 public:
  explicit ForwardedObserver(Observer& caller) : caller_(caller) {}

  void tensor(const std::string& name, const torch::Tensor& value) override {
    forward([&] { caller_.tensor(name, value); });
  }
  void step(size_t call, size_t calls) override {
    forward([&] { caller_.step(call, calls); });
  }
  bool wants_preview(size_t call, size_t calls) override {
    bool wants = false;
    forward([&] { wants = caller_.wants_preview(call, calls); });
    return wants;
  }
  void preview(size_t call, size_t calls, const std::vector<GeneratedImage>& images) override {
    forward([&] { caller_.preview(call, calls, images); });
  }

 private:
  template <class Call>
  static void forward(const Call& call) {
    try {
      call();
    } catch (...) {
      throw ObserverThrew{std::current_exception()};
    }
  }

  Observer& caller_;
};

}  // namespace txt2img
