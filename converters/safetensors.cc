#include "converters/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <set>

#include "converters/json_util.h"

namespace moerun::convert {
namespace {

constexpr size_t kMaxRank = 8;
constexpr uint64_t kMaxConfigBytes = 16ull << 20;
constexpr uint64_t kMaxIndexBytes = 256ull << 20;

struct DTypeEntry {
  const char* name;
  StDType type;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {"F32", StDType::kF32, 4},       {"BF16", StDType::kBF16, 2},  {"F16", StDType::kF16, 2},
    {"F8_E4M3", StDType::kF8E4M3, 1}, {"F64", StDType::kF64, 8},   {"F8_E5M2", StDType::kF8E5M2, 1},
    {"I64", StDType::kI64, 8},       {"I32", StDType::kI32, 4},    {"I16", StDType::kI16, 2},
    {"I8", StDType::kI8, 1},         {"U64", StDType::kU64, 8},    {"U32", StDType::kU32, 4},
    {"U16", StDType::kU16, 2},       {"U8", StDType::kU8, 1},      {"BOOL", StDType::kBool, 1},
};

std::string FileBaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool IsPlainFileName(const std::string& s) {
  if (s.empty() || s == "." || s == "..") return false;
  for (char c : s)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Reads a JSON unsigned integer exactly (no floats, negatives or booleans).
bool AsUint(const nlohmann::json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) {
    if (v.is_number_integer() && v.get<int64_t>() >= 0) {
      *out = static_cast<uint64_t>(v.get<int64_t>());
      return true;
    }
    return false;
  }
  *out = v.get<uint64_t>();
  return true;
}

}  // namespace

const char* StDTypeName(StDType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.name;
  return "?";
}

size_t StDTypeSize(StDType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.size;
  return 0;
}

bool ToRuntimeDType(StDType t, DType* out) {
  switch (t) {
    case StDType::kF32: *out = DType::kF32; return true;
    case StDType::kBF16: *out = DType::kBF16; return true;
    case StDType::kF16: *out = DType::kF16; return true;
    case StDType::kF8E4M3: *out = DType::kF8E4M3; return true;
    default: return false;
  }
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), file_size_);
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) return IoError("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (::fstat(f->fd_, &st) != 0) return IoError("cannot stat '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return IoError("'" + path + "' is not a regular file");
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  if (f->file_size_ < 8)
    return CorruptFile("'" + path + "' is " + std::to_string(f->file_size_) +
                       " bytes: truncated (a safetensors file starts with an 8-byte header length)");
  void* p = ::mmap(nullptr, f->file_size_, PROT_READ, MAP_PRIVATE, f->fd_, 0);
  if (p == MAP_FAILED) return IoError("cannot mmap '" + path + "': " + std::strerror(errno));
  f->base_ = static_cast<const uint8_t*>(p);

  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(f->base_[i]) << (8 * i);
  if (n > kMaxHeaderBytes)
    return CorruptFile("'" + path + "': header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > f->file_size_ - 8)
    return CorruptFile("'" + path + "': header length " + std::to_string(n) + " runs past the end of the file (" +
                       std::to_string(f->file_size_) + " bytes): truncated?");
  if (n == 0) return CorruptFile("'" + path + "': empty header");
  f->data_offset_ = 8 + n;
  try {
    const std::string header(reinterpret_cast<const char*>(f->base_ + 8), n);
    MOERUN_RETURN_IF_ERROR(f->ParseHeader(header));
  } catch (const std::bad_alloc&) {
    return OutOfMemory("'" + path + "': out of memory while reading the header");
  } catch (const std::exception& e) {
    return CorruptFile("'" + path + "': " + e.what());
  }
  return f;
}

Status SafetensorsFile::ParseHeader(const std::string& header) {
  const std::string where = "'" + path_ + "'";
  // Used in place (not moved out) so that the releaser empties the only copy of the document.
  Result<nlohmann::json> parsed = ParseJsonStrict(header, where + " header");
  if (!parsed.ok()) return parsed.status();
  nlohmann::json& j = parsed.value();
  const JsonReleaser release_j(j);
  if (!j.is_object()) return CorruptFile(where + ": header is a JSON " + JsonTypeName(j) + ", expected an object");
  const uint64_t data_size = file_size_ - data_offset_;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return CorruptFile(where + ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          return CorruptFile(where + ": __metadata__ entry '" + m.key() + "' is a " + JsonTypeName(m.value()) +
                             ", expected a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string label = where + ": tensor '" + name + "'";
    if (!v.is_object()) return CorruptFile(label + ": entry is a " + JsonTypeName(v) + ", expected an object");
    StTensor t;
    t.name = name;
    // dtype
    auto d = v.find("dtype");
    if (d == v.end() || !d->is_string()) return CorruptFile(label + ": missing or non-string 'dtype'");
    const std::string dname = d->get<std::string>();
    bool known = false;
    for (const auto& e : kDTypes)
      if (dname == e.name) {
        t.dtype = e.type;
        known = true;
      }
    if (!known) return Unsupported(label + ": unknown dtype '" + dname + "'");
    // shape
    auto s = v.find("shape");
    if (s == v.end() || !s->is_array()) return CorruptFile(label + ": missing or non-list 'shape'");
    if (s->size() > kMaxRank)
      return CorruptFile(label + ": rank " + std::to_string(s->size()) + " exceeds " + std::to_string(kMaxRank));
    uint64_t numel = 1;
    for (const auto& dim : *s) {
      uint64_t x;
      if (!AsUint(dim, &x)) return CorruptFile(label + ": shape entries must be non-negative integers");
      if (!CheckedMul(numel, x, &numel)) return CorruptFile(label + ": shape product overflows");
      t.shape.push_back(x);
    }
    t.numel = numel;
    // data_offsets
    auto o = v.find("data_offsets");
    if (o == v.end() || !o->is_array() || o->size() != 2)
      return CorruptFile(label + ": 'data_offsets' must be a list [begin, end]");
    if (!AsUint((*o)[0], &t.begin) || !AsUint((*o)[1], &t.end))
      return CorruptFile(label + ": data_offsets must be non-negative integers");
    if (t.begin > t.end)
      return CorruptFile(label + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                         "] has begin > end");
    if (t.end > data_size)
      return CorruptFile(label + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                         "] extend past the data area (" + std::to_string(data_size) + " bytes): truncated?");
    uint64_t bytes;
    if (!CheckedMul(numel, StDTypeSize(t.dtype), &bytes)) return CorruptFile(label + ": byte size overflows");
    if (t.end - t.begin != bytes)
      return CorruptFile(label + ": data_offsets span " + std::to_string(t.end - t.begin) + " bytes but shape and " +
                         dname + " need " + std::to_string(bytes));
    index_.emplace(name, tensors_.size());  // duplicates were rejected by the strict parser
    tensors_.push_back(std::move(t));
  }
  // Overlaps: sort non-empty ranges by start.
  std::vector<const StTensor*> byoff;
  for (const StTensor& t : tensors_)
    if (t.size() > 0) byoff.push_back(&t);
  std::sort(byoff.begin(), byoff.end(), [](const StTensor* a, const StTensor* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < byoff.size(); ++i)
    if (byoff[i]->begin < byoff[i - 1]->end)
      return CorruptFile(where + ": tensors '" + byoff[i - 1]->name + "' and '" + byoff[i]->name +
                         "' overlap in the data area");
  return Status::Ok();
}

const StTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status SafetensorsFile::Read(const StTensor& t, uint64_t offset, void* dst, uint64_t bytes) const {
  if (offset > t.size() || bytes > t.size() - offset)
    return InternalError("read past the end of tensor '" + t.name + "' in '" + path_ + "'");
  uint8_t* out = static_cast<uint8_t*>(dst);
  uint64_t pos = data_offset_ + t.begin + offset;
  while (bytes > 0) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(bytes, 1ull << 30));
    const ssize_t n = ::pread(fd_, out, want, static_cast<off_t>(pos));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError("reading tensor '" + t.name + "' from '" + path_ + "': " + std::strerror(errno));
    if (n == 0) return IoError("reading tensor '" + t.name + "' from '" + path_ + "': file ended early (truncated?)");
    out += n;
    pos += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

void SafetensorsFile::Release(const StTensor& t) const {
  const long page = ::sysconf(_SC_PAGESIZE);
  const uint64_t pg = page > 0 ? static_cast<uint64_t>(page) : 4096;
  const uint64_t begin = data_offset_ + t.begin;
  const uint64_t end = data_offset_ + t.end;
  const uint64_t a = AlignUp(begin, pg);
  const uint64_t b = end / pg * pg;  // whole pages only: neighbours may still be in use
  if (b > a) ::madvise(const_cast<uint8_t*>(base_) + a, b - a, MADV_DONTNEED);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

Result<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir_in) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  c->dir_ = dir;
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return IoError("checkpoint folder '" + dir + "' does not exist or is not a directory");
  c->config_path_ = dir + "/config.json";
  MOERUN_ASSIGN_OR_RETURN(c->config_text_, ReadTextFile(c->config_path_, kMaxConfigBytes));

  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (FileExists(single)) {
    c->weights_source_ = single;
    MOERUN_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(single));
    for (const StTensor& t : f->tensors()) c->refs_[t.name] = Ref{f.get(), &t};
    c->files_.push_back(std::move(f));
    return c;
  }
  if (!FileExists(index))
    return IoError("checkpoint folder '" + dir + "' has neither model.safetensors nor model.safetensors.index.json");
  c->sharded_ = true;
  c->weights_source_ = index;
  try {
    MOERUN_RETURN_IF_ERROR(c->LoadIndex(index));
  } catch (const std::bad_alloc&) {
    return OutOfMemory("'" + index + "': out of memory while reading the index");
  } catch (const std::exception& e) {
    return CorruptFile("'" + index + "': " + e.what());
  }
  return c;
}

Status Checkpoint::LoadIndex(const std::string& index_path) {
  const std::string where = "'" + index_path + "'";
  MOERUN_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path, kMaxIndexBytes));
  // Used in place (not moved out) so that the releaser empties the only copy of the document.
  Result<nlohmann::json> parsed = ParseJsonStrict(text, where);
  if (!parsed.ok()) return parsed.status();
  nlohmann::json& j = parsed.value();
  const JsonReleaser release_j(j);
  if (!j.is_object()) return CorruptFile(where + ": index is a JSON " + JsonTypeName(j) + ", expected an object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) return CorruptFile(where + ": missing or non-object 'weight_map'");
  if (wm->empty()) return CorruptFile(where + ": 'weight_map' is empty");
  // Shard file name → tensors it should hold (std::map: deterministic open order).
  std::map<std::string, std::vector<std::string>> shards;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string())
      return CorruptFile(where + ": weight_map entry '" + it.key() + "' is a " + JsonTypeName(it.value()) +
                         ", expected a shard file name");
    const std::string shard = it.value().get<std::string>();
    if (!IsPlainFileName(shard))
      return CorruptFile(where + ": weight_map maps '" + it.key() + "' to '" + shard +
                         "', which is not a plain file name inside the checkpoint folder");
    shards[shard].push_back(it.key());
  }
  for (const auto& [shard, names] : shards)
    if (!FileExists(dir_ + "/" + shard))
      return IoError(where + " lists shard '" + shard + "' (for tensor '" + names.front() +
                     "'), but the file does not exist");
  for (auto& [shard, names] : shards) {
    const std::string shard_path = dir_ + "/" + shard;
    MOERUN_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(shard_path));
    std::set<std::string> expected(names.begin(), names.end());
    for (const std::string& name : names) {
      const StTensor* t = f->Find(name);
      if (!t)
        return InvalidArgument(where + " maps tensor '" + name + "' to shard '" + shard +
                               "', but that shard does not contain it");
      refs_[name] = Ref{f.get(), t};
    }
    for (const StTensor& t : f->tensors())
      if (!expected.count(t.name))
        return InvalidArgument("unexpected tensor '" + t.name + "' in shard '" + shard_path + "': " +
                               FileBaseName(index_path) + " does not list it for this shard");
    files_.push_back(std::move(f));
  }
  return Status::Ok();
}

const Checkpoint::Ref* Checkpoint::Find(const std::string& name) const {
  auto it = refs_.find(name);
  return it == refs_.end() ? nullptr : &it->second;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> out;
  out.reserve(refs_.size());
  for (const auto& [name, ref] : refs_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing

Status WriteSafetensors(const std::string& path, const std::vector<StTensorData>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const StTensorData& t : tensors) {
    uint64_t numel = 1;
    for (uint64_t d : t.shape)
      if (!CheckedMul(numel, d, &numel)) return InvalidArgument("tensor '" + t.name + "': shape product overflows");
    uint64_t bytes;
    if (!CheckedMul(numel, StDTypeSize(t.dtype), &bytes) || bytes != t.bytes.size())
      return InvalidArgument("tensor '" + t.name + "': " + std::to_string(t.bytes.size()) +
                             " bytes do not match its shape and dtype");
    header[t.name] = {{"dtype", StDTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return IoError("cannot create '" + path + "': " + std::strerror(errno));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const StTensorData& t : tensors)
    if (ok && !t.bytes.empty()) ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
  if (std::fclose(f) != 0) ok = false;
  if (!ok) return IoError("writing '" + path + "' failed");
  return Status::Ok();
}

}  // namespace moerun::convert
