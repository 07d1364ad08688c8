// A fresh temporary directory per test, removed afterwards.
//
// Made and removed with POSIX calls, not std::filesystem: PyTorch 2.11's wheel exports its own
// copies of libstdc++'s std::filesystem functions, and in a build against it
// std::filesystem::remove_all bound to libtorch.so's copy and jumped to address 0 (every test with
// a TempDir crashed on a GPU machine).
#pragma once

#include <gtest/gtest.h>

#include <ftw.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffuse::testing {

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const char* tmp = std::getenv("TMPDIR");
    std::string test = std::string(info->test_suite_name()) + "_" + info->name();
    for (char& ch : test) ch = ch == '/' ? '_' : ch;  // parameterised tests are named "Suite/Test/Param"
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/diffuse_test_" + test + "_XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (!::mkdtemp(buffer.data())) throw std::runtime_error("TempDir: mkdtemp failed for " + pattern);
    path_ = buffer.data();
  }
  ~TempDir() { remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  std::string str() const { return path_; }

 private:
  // rm -r: children before their directory (FTW_DEPTH), without following links (FTW_PHYS).
  static void remove_tree(const std::string& root) {
    ::nftw(root.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
           FTW_DEPTH | FTW_PHYS);
  }
  std::string path_;
};

}  // namespace diffuse::testing
