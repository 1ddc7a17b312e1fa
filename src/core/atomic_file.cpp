#include "saap/core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "saap/core/error.h"

namespace saap {

namespace {

// Unique per process and call, so two writers of one path (threads) never share a temporary file.
std::string temp_name(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(temp_name(path_)) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  SAAP_CHECK_FMT(fd_ >= 0, BadFile, "cannot create '%s': %s", tmp_.c_str(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  SAAP_CHECK_FMT(fd_ >= 0, InvalidArgument, "'%s' was already committed", path_.c_str());
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    SAAP_CHECK_FMT(w > 0, BadFile, "writing '%s' failed: %s", tmp_.c_str(), std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

void AtomicFile::commit() {
  SAAP_CHECK_FMT(fd_ >= 0, InvalidArgument, "'%s' was already committed", path_.c_str());
  SAAP_CHECK_FMT(::fsync(fd_) == 0, BadFile, "fsync of '%s' failed: %s", tmp_.c_str(), std::strerror(errno));
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0 || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    SAAP_THROW_FMT(BadFile, "cannot move '%s' to '%s': %s", tmp_.c_str(), path_.c_str(), std::strerror(err));
  }
  // Best effort: a directory that cannot be opened (no read permission) still got the rename.
  const int dir = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

}  // namespace saap
