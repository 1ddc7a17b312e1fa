// Files written atomically: the bytes go to a temporary file beside the target, which is synced
// and renamed over the target only by commit(). A failure or a crash before commit() leaves the
// previous file (or none) under the target's name, never a half-written one. A crash can leave
// the temporary file (<path>.tmp.<pid>.<n>) behind; nothing reads those.
#pragma once
#include <cstddef>
#include <string>

namespace saap {

class AtomicFile {
 public:
  // Creates the temporary file; BadFile naming it when that fails (e.g. a missing directory).
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // without commit(): closes and removes the temporary file
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // BadFile naming the file and the system's reason
  void write(const std::string& text) { write(text.data(), text.size()); }
  // fsync, rename over the target, fsync the directory (so the rename itself survives a crash).
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// One-shot form: writes `contents` to `path` atomically.
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace saap
