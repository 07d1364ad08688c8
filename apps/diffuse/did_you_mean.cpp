// "did you mean --steps?" for a mistyped flag: the closest name (edit distance) among the flags of
// the subcommand being parsed.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"

namespace diffuse::cli {

namespace {

// Levenshtein distance: insertions, deletions and substitutions of one character each cost 1.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The subcommand the user was in: the last one parsed, followed down.
const CLI::App* innermost(const CLI::App& app) {
  const CLI::App* at = &app;
  for (auto subcommands = at->get_subcommands(); !subcommands.empty(); subcommands = at->get_subcommands()) {
    at = subcommands.back();
  }
  return at;
}

}  // namespace

std::string did_you_mean(const CLI::App& app, const std::vector<std::string>& unexpected) {
  const CLI::App* command = innermost(app);
  std::vector<std::string> names;
  for (const CLI::Option* option : command->get_options()) {
    for (const auto& name : option->get_lnames()) names.push_back("--" + name);
  }
  std::ostringstream out;
  for (const auto& arg : unexpected) {
    if (arg.rfind("--", 0) != 0) continue;
    const std::string flag = arg.substr(0, arg.find('='));
    std::string best;
    size_t best_distance = 3;  // suggest only close names (at most 2 edits)
    for (const auto& name : names) {
      const size_t d = edit_distance(flag, name);
      if (d < best_distance) best = name, best_distance = d;
    }
    if (!best.empty()) out << flag << ": did you mean " << best << "?\n";
  }
  return out.str();
}

}  // namespace diffuse::cli
