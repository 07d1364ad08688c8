// Runs a shell command and returns its exit status and output (stdout and stderr together).
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>

namespace diffuse::testing {

struct CommandResult {
  int status;
  std::string output;
};

inline CommandResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Runs command(0) and command(1) at the same time (two data-parallel ranks) and returns both results.
inline std::pair<CommandResult, CommandResult> run_two_ranks(const std::function<std::string(int rank)>& command) {
  CommandResult r0, r1;
  std::thread t0([&] { r0 = run_command(command(0)); });
  std::thread t1([&] { r1 = run_command(command(1)); });
  t0.join();
  t1.join();
  return {r0, r1};
}

}  // namespace diffuse::testing
