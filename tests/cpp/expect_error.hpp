// The C++ tests' check of an error path: the call throws txt2img::Error of the kind, with every fragment in its
// message.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>

#include "txt2img/error.hpp"

template <typename Fn>
void expect_error(Fn fn, txt2img::ErrorKind kind, std::initializer_list<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const txt2img::Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}
