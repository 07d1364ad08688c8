#include "captions.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "diffuse/io/atomic_file.h"

namespace diffuse {

namespace {

std::string base_name(const std::string& relative) {
  const auto slash = relative.rfind('/');
  return slash == std::string::npos ? relative : relative.substr(slash + 1);
}

std::string folder_of(const std::string& relative) {
  const auto slash = relative.rfind('/');
  return slash == std::string::npos ? std::string() : relative.substr(0, slash + 1);
}

std::string without_extension(const std::string& relative) {
  const auto dot = relative.rfind('.');
  return dot == std::string::npos || dot < folder_of(relative).size() ? relative : relative.substr(0, dot);
}

// Leading and trailing white space off (a caption file's final newline).
std::string trimmed(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return {};
  return s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1);
}

// One CSV record from `in` (RFC 4180: fields in double quotes may hold commas, newlines and "").
bool read_csv_record(std::istream& in, std::vector<std::string>& fields, int64_t& line) {
  fields.assign(1, std::string());
  if (in.peek() == EOF) return false;
  bool quoted = false;
  for (int c; (c = in.get()) != EOF;) {
    if (quoted) {
      if (c == '"' && in.peek() == '"') {
        fields.back() += static_cast<char>(in.get());
      } else if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        fields.back() += static_cast<char>(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else if (c == '\n') {
      ++line;
      break;
    } else if (c != '\r') {
      fields.back() += static_cast<char>(c);
    }
  }
  if (quoted) throw std::runtime_error("a quoted field is not closed");
  return true;
}

void add_caption(std::map<std::string, std::string>& captions, const std::string& image, std::string text,
                 const std::string& where) {
  if (!captions.emplace(image, trimmed(text)).second) {
    throw std::runtime_error(where + ": a second caption for '" + image + "'");
  }
}

void read_jsonl(const std::string& bytes, const std::string& folder, const std::string& where,
                std::map<std::string, std::string>& captions) {
  std::istringstream in(bytes);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (trimmed(line).empty()) continue;
    const std::string at = where + " line " + std::to_string(number);
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("file_name") || !j["file_name"].is_string()) {
      throw std::runtime_error(at + ": expected a JSON object with a string \"file_name\"");
    }
    const char* key = j.contains("text") ? "text" : "caption";
    if (!j.contains(key) || !j[key].is_string()) throw std::runtime_error(at + ": expected a string \"text\"");
    add_caption(captions, folder + j["file_name"].get<std::string>(), j[key].get<std::string>(), at);
  }
}

void read_csv(const std::string& bytes, const std::string& folder, const std::string& where,
              std::map<std::string, std::string>& captions) {
  std::istringstream in(bytes);
  std::vector<std::string> header, fields;
  int64_t line = 1;
  auto column = [&](const std::string& name) {
    for (size_t i = 0; i < header.size(); ++i) {
      if (trimmed(header[i]) == name) return static_cast<int64_t>(i);
    }
    return int64_t{-1};
  };
  try {
    if (!read_csv_record(in, header, line)) throw std::runtime_error("empty (expected a header: file_name,text)");
    const int64_t file_column = column("file_name");
    const int64_t text_column = column("text") >= 0 ? column("text") : column("caption");
    if (file_column < 0 || text_column < 0) throw std::runtime_error("the header names no file_name and text columns");
    for (int64_t record = line; read_csv_record(in, fields, line); record = line) {
      if (fields.size() == 1 && trimmed(fields[0]).empty()) continue;
      if (static_cast<int64_t>(fields.size()) <= std::max(file_column, text_column)) {
        throw std::runtime_error("line " + std::to_string(record) + ": " + std::to_string(fields.size()) +
                                 " fields, fewer than the header's");
      }
      add_caption(captions, folder + trimmed(fields[file_column]), fields[text_column],
                  where + " line " + std::to_string(record));
    }
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    throw std::runtime_error(what.rfind(where, 0) == 0 ? what : where + ": " + what);
  }
}

}  // namespace

bool is_caption_name(const std::string& name) {
  const auto base = base_name(name);
  auto ends_with = [&](const std::string& suffix) {
    return base.size() >= suffix.size() && base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return base == "metadata.jsonl" || base == "metadata.csv" || ends_with(".txt");
}

std::vector<std::string> captions_of(const std::string& name, const std::vector<ImageEntry>& images,
                                     const std::vector<ImageEntry>& sources) {
  if (sources.empty()) return {};
  std::map<std::string, std::string> from_metadata, from_text_files;
  for (const auto& s : sources) {
    const std::string where = s.file.empty() ? "data '" + name + "': " + s.member : "'" + s.file + "'";
    const auto base = base_name(s.relative);
    const bool metadata = base == "metadata.jsonl" || base == "metadata.csv";
    const uint64_t limit = metadata ? kMaxMetadataFileBytes : kMaxCaptionFileBytes;
    if (s.file.empty() && s.bytes.size() > limit) {
      throw std::runtime_error(where + ": more than the " + std::to_string(limit) + " bytes a caption file may have");
    }
    const std::string bytes = s.file.empty() ? s.bytes : read_file(s.file, limit);
    if (base == "metadata.jsonl") {
      read_jsonl(bytes, folder_of(s.relative), where, from_metadata);
    } else if (base == "metadata.csv") {
      read_csv(bytes, folder_of(s.relative), where, from_metadata);
    } else {
      add_caption(from_text_files, without_extension(s.relative), bytes, where);
    }
  }
  // A .txt file beside no image (a README.txt) is not a caption; a tree whose only text files are
  // such has no captions.
  const auto has_text_file = [&](const ImageEntry& image) {
    return from_text_files.count(without_extension(image.relative)) > 0;
  };
  if (from_metadata.empty() && std::none_of(images.begin(), images.end(), has_text_file)) return {};
  std::vector<std::string> captions;
  captions.reserve(images.size());
  for (const auto& image : images) {
    if (const auto it = from_metadata.find(image.relative); it != from_metadata.end()) {
      captions.push_back(it->second);
    } else if (has_text_file(image)) {
      captions.push_back(from_text_files.at(without_extension(image.relative)));
    } else {
      throw std::runtime_error("data '" + name + "': image '" + image.relative +
                               "' has no caption (the tree has captions: give every image a NAME.txt or a "
                               "row in metadata.jsonl / metadata.csv)");
    }
  }
  return captions;
}

}  // namespace diffuse
