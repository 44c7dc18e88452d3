#include "pipeline/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace tutti {

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxAlignment = 1u << 20;

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}

bool known_value_type(uint32_t t) { return t <= uint32_t(GgufValueType::F64); }

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Bounds-checked cursor over the file image. Every read checks the remaining length first,
// so no count or length from the file can make it read past the end.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size) : base_(base), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <class T>
  bool read(T& out) {
    if (remaining() < sizeof(T)) return false;
    out = load<T>(base_ + pos_);
    pos_ += sizeof(T);
    return true;
  }
  bool read_string(std::string& out) {
    uint64_t n;
    if (!read(n) || n > remaining()) return false;
    out.assign(reinterpret_cast<const char*>(base_ + pos_), n);
    pos_ += n;
    return true;
  }
  const uint8_t* skip(size_t n) {
    if (n > remaining()) return nullptr;
    const uint8_t* p = base_ + pos_;
    pos_ += n;
    return p;
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

std::string_view gguf_value_type_name(GgufValueType t) {
  static constexpr std::string_view names[] = {"u8",  "i8",   "u16",    "i16",   "u32",
                                               "i32", "f32",  "bool",   "string", "array",
                                               "u64", "i64",  "f64"};
  const auto i = uint32_t(t);
  return i < std::size(names) ? names[i] : "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::U16:
    case GgufValueType::I16: case GgufValueType::U32: case GgufValueType::I32:
    case GgufValueType::U64: case GgufValueType::I64: return true;
    default: return false;
  }
}

static double element_f64(GgufValueType t, const uint8_t* p) {
  switch (t) {
    case GgufValueType::U8: return *p;
    case GgufValueType::I8: return int8_t(*p);
    case GgufValueType::BOOL: return *p != 0;
    case GgufValueType::U16: return load<uint16_t>(p);
    case GgufValueType::I16: return load<int16_t>(p);
    case GgufValueType::U32: return load<uint32_t>(p);
    case GgufValueType::I32: return load<int32_t>(p);
    case GgufValueType::F32: return load<float>(p);
    case GgufValueType::U64: return double(load<uint64_t>(p));
    case GgufValueType::I64: return double(load<int64_t>(p));
    case GgufValueType::F64: return load<double>(p);
    default: return 0;
  }
}

const uint8_t* GgufValue::array_data() const { return elements ? elements : owned.data(); }

double GgufValue::array_f64(uint64_t index) const {
  assert(type == GgufValueType::ARRAY && index < count);
  return element_f64(element_type, array_data() + index * scalar_size(element_type));
}

int64_t GgufValue::array_i64(uint64_t index) const {
  assert(type == GgufValueType::ARRAY && index < count);
  const uint8_t* p = array_data() + index * scalar_size(element_type);
  switch (element_type) {
    case GgufValueType::U64: return int64_t(load<uint64_t>(p));
    case GgufValueType::I64: return load<int64_t>(p);
    default: return int64_t(element_f64(element_type, p));
  }
}

std::string GgufTensorInfo::shape_string() const {
  std::ostringstream s;
  s << "[";
  for (uint32_t d = 0; d < n_dims; ++d) s << (d ? ", " : "") << ne[d];
  s << "]";
  return s.str();
}

Expected<std::shared_ptr<const GgufFile>> GgufFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error{path + ": cannot open: " + std::strerror(errno)};
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error{path + ": not a regular file"};
  }
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->size_ = size_t(st.st_size);
  if (f->size_ > 0) {
    void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Error{path + ": mmap failed: " + std::strerror(err)};
    }
    f->base_ = static_cast<const uint8_t*>(p);
    f->mapped_ = true;
  }
  ::close(fd);
  if (Status s = f->parse_all(); !s) return s.error();
  return std::shared_ptr<const GgufFile>(std::move(f));
}

Expected<std::shared_ptr<const GgufFile>> GgufFile::parse(const uint8_t* data, size_t size,
                                                          const std::string& name) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  f->base_ = data;
  f->size_ = size;
  if (Status s = f->parse_all(); !s) return s.error();
  return std::shared_ptr<const GgufFile>(std::move(f));
}

GgufFile::~GgufFile() {
  if (mapped_) munmap(const_cast<uint8_t*>(base_), size_);
}

Status GgufFile::parse_all() {
  auto fail = [&](const std::string& what) { return Status(Error{path_ + ": " + what}); };
  Cursor c(base_, size_);
  uint32_t magic;
  if (!c.read(magic)) return fail("too short for a GGUF header (" + std::to_string(size_) + " bytes)");
  if (magic != 0x46554747u) return fail("not a GGUF file (bad magic)");
  if (!c.read(version_)) return fail("truncated header (version)");
  if (version_ != 2 && version_ != 3)
    return fail("unsupported GGUF version " + std::to_string(version_) + " (2 and 3 are supported)");
  uint64_t n_tensors, n_kv;
  if (!c.read(n_tensors) || !c.read(n_kv)) return fail("truncated header (counts)");
  // Each kv entry takes at least 13 bytes (key length, type, 1-byte value); each tensor info 32.
  if (n_kv > c.remaining() / 13) return fail("metadata count " + std::to_string(n_kv) + " exceeds what the file can hold");
  if (n_tensors > c.remaining() / 32) return fail("tensor count " + std::to_string(n_tensors) + " exceeds what the file can hold");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    const std::string where = "metadata entry " + std::to_string(k);
    if (!c.read_string(key)) return fail("truncated " + where + " (key)");
    uint32_t type_id;
    if (!c.read(type_id)) return fail("truncated value of '" + key + "'");
    if (!known_value_type(type_id)) return fail("unknown value type " + std::to_string(type_id) + " for '" + key + "'");
    GgufValue v;
    v.type = GgufValueType(type_id);
    if (v.type == GgufValueType::STRING) {
      if (!c.read_string(v.str)) return fail("truncated string value of '" + key + "'");
    } else if (v.type == GgufValueType::ARRAY) {
      uint32_t et;
      if (!c.read(et) || !c.read(v.count)) return fail("truncated array header of '" + key + "'");
      if (!known_value_type(et)) return fail("unknown array element type " + std::to_string(et) + " for '" + key + "'");
      v.element_type = GgufValueType(et);
      if (v.element_type == GgufValueType::ARRAY) return fail("nested arrays are not supported ('" + key + "')");
      if (v.element_type == GgufValueType::STRING) {
        if (v.count > c.remaining() / 8) return fail("array '" + key + "' has " + std::to_string(v.count) + " strings, more than the file can hold");
        v.strings.resize(v.count);
        for (auto& s : v.strings)
          if (!c.read_string(s)) return fail("truncated string array '" + key + "'");
      } else {
        const size_t es = scalar_size(v.element_type);
        if (v.count > c.remaining() / es) return fail("array '" + key + "' of " + std::to_string(v.count) + " elements runs past the end of the file");
        v.elements = c.skip(v.count * es);
      }
    } else {
      const size_t n = scalar_size(v.type);
      const uint8_t* p = c.skip(n);
      if (!p) return fail("truncated value of '" + key + "'");
      switch (v.type) {
        case GgufValueType::U8: case GgufValueType::BOOL: v.u = *p; break;
        case GgufValueType::I8: v.i = int8_t(*p); break;
        case GgufValueType::U16: v.u = load<uint16_t>(p); break;
        case GgufValueType::I16: v.i = load<int16_t>(p); break;
        case GgufValueType::U32: v.u = load<uint32_t>(p); break;
        case GgufValueType::I32: v.i = load<int32_t>(p); break;
        case GgufValueType::U64: v.u = load<uint64_t>(p); break;
        case GgufValueType::I64: v.i = load<int64_t>(p); break;
        case GgufValueType::F32: v.f = load<float>(p); break;
        case GgufValueType::F64: v.f = load<double>(p); break;
        default: break;
      }
      if (v.type == GgufValueType::I8 || v.type == GgufValueType::I16 || v.type == GgufValueType::I32 || v.type == GgufValueType::I64)
        v.u = v.i < 0 ? 0 : uint64_t(v.i);
      else
        v.i = v.u > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(v.u);
    }
    if (!kv_.emplace(key, std::move(v)).second) return fail("duplicate metadata key '" + key + "'");
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_integer() || a->u == 0 || a->u > kMaxAlignment || (a->u & (a->u - 1)) != 0)
      return fail("general.alignment must be a power of two up to 1 MiB");
    alignment_ = a->u;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t t = 0; t < n_tensors; ++t) {
    GgufTensorInfo info;
    if (!c.read_string(info.name)) return fail("truncated tensor info " + std::to_string(t) + " (name)");
    const std::string tn = "tensor '" + info.name + "'";
    if (!c.read(info.n_dims)) return fail("truncated " + tn);
    if (info.n_dims == 0 || info.n_dims > kMaxDims)
      return fail(tn + " has " + std::to_string(info.n_dims) + " dimensions (1 to 4 allowed)");
    for (uint32_t d = 0; d < info.n_dims; ++d)
      if (!c.read(info.ne[d])) return fail("truncated " + tn + " (shape)");
    uint32_t type_id;
    if (!c.read(type_id) || !c.read(info.offset)) return fail("truncated " + tn);
    const auto type = tensor_type_info(type_id);
    if (!type)
      return fail(tn + " has type " + std::string(ggml_type_name(type_id)) + " (id " + std::to_string(type_id) +
                  "), which tutti does not implement (supported: f32, f16, bf16, q8_0, q4_0)");
    info.type = type->type;
    // Element count with overflow checks; no tensor may be larger than the file anyway.
    uint64_t n = 1;
    for (uint32_t d = 0; d < info.n_dims; ++d) {
      if (info.ne[d] == 0) return fail(tn + " has a zero dimension " + info.shape_string());
      if (info.ne[d] > size_ * 8 || n > (size_ * 8) / info.ne[d])
        return fail(tn + " shape " + info.shape_string() + " is larger than the file");
      n *= info.ne[d];
    }
    if (info.ne[0] % type->block_values != 0)
      return fail(tn + " row length " + std::to_string(info.ne[0]) + " is not a multiple of the " +
                  std::string(type->name) + " block size " + std::to_string(type->block_values));
    info.n_bytes = n / type->block_values * type->block_bytes;
    if (info.offset % alignment_ != 0) return fail(tn + " data offset " + std::to_string(info.offset) + " is not aligned to " + std::to_string(alignment_));
    if (tensor_index_.count(info.name)) return fail("duplicate tensor name '" + info.name + "'");
    tensor_index_[info.name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t header_end = c.pos();
  const uint64_t data_start = (header_end + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_start > size_) return fail("truncated before the tensor data section");
  const uint64_t data_size = size_ > data_start ? size_ - data_start : 0;
  for (auto& t : tensors_) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset)
      return fail("tensor '" + t.name + "' data [" + std::to_string(t.offset) + ", +" + std::to_string(t.n_bytes) +
                  ") lies outside the data section of " + std::to_string(data_size) + " bytes (truncated file?)");
    t.data = base_ + data_start + t.offset;
  }
  return Status::Ok();
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Expected<std::optional<uint64_t>> GgufFile::get_uint(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<uint64_t>();
  if (!v->is_integer()) return Error{path_ + ": metadata '" + key + "' should be an integer, is " + std::string(gguf_value_type_name(v->type))};
  if (v->i < 0) return Error{path_ + ": metadata '" + key + "' is negative"};
  return std::optional<uint64_t>(v->u);
}

Expected<std::optional<double>> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<double>();
  if (v->is_float()) return std::optional<double>(v->f);
  if (v->is_integer()) return std::optional<double>(double(v->i));
  return Error{path_ + ": metadata '" + key + "' should be a number, is " + std::string(gguf_value_type_name(v->type))};
}

Expected<std::optional<std::string>> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<std::string>();
  if (v->type != GgufValueType::STRING) return Error{path_ + ": metadata '" + key + "' should be a string"};
  return std::optional<std::string>(v->str);
}

Expected<std::optional<bool>> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<bool>();
  if (v->type != GgufValueType::BOOL && !v->is_integer()) return Error{path_ + ": metadata '" + key + "' should be a bool"};
  return std::optional<bool>(v->u != 0);
}

// ---------------------------------------------------------------- writer

void GgufWriter::put(const std::string& key, GgufValue v) {
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::set_u32(const std::string& key, uint32_t x) {
  GgufValue v; v.type = GgufValueType::U32; v.u = x; v.i = x; put(key, std::move(v));
}
void GgufWriter::set_i32(const std::string& key, int32_t x) {
  GgufValue v; v.type = GgufValueType::I32; v.i = x; v.u = x < 0 ? 0 : x; put(key, std::move(v));
}
void GgufWriter::set_u64(const std::string& key, uint64_t x) {
  GgufValue v; v.type = GgufValueType::U64; v.u = x; v.i = int64_t(x); put(key, std::move(v));
}
void GgufWriter::set_f32(const std::string& key, float x) {
  GgufValue v; v.type = GgufValueType::F32; v.f = x; put(key, std::move(v));
}
void GgufWriter::set_bool(const std::string& key, bool x) {
  GgufValue v; v.type = GgufValueType::BOOL; v.u = x; v.i = x; put(key, std::move(v));
}
void GgufWriter::set_string(const std::string& key, const std::string& x) {
  GgufValue v; v.type = GgufValueType::STRING; v.str = x; put(key, std::move(v));
}
void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& x) {
  GgufValue v; v.type = GgufValueType::ARRAY; v.element_type = GgufValueType::STRING;
  v.count = x.size(); v.strings = x; put(key, std::move(v));
}
void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& x) {
  GgufValue v; v.type = GgufValueType::ARRAY; v.element_type = GgufValueType::F32; v.count = x.size();
  v.owned.resize(x.size() * 4); std::memcpy(v.owned.data(), x.data(), v.owned.size()); put(key, std::move(v));
}
void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& x) {
  GgufValue v; v.type = GgufValueType::ARRAY; v.element_type = GgufValueType::I32; v.count = x.size();
  v.owned.resize(x.size() * 4); std::memcpy(v.owned.data(), x.data(), v.owned.size()); put(key, std::move(v));
}
void GgufWriter::set_value(const std::string& key, const GgufValue& src) {
  GgufValue v = src;
  if (v.type == GgufValueType::ARRAY && v.element_type != GgufValueType::STRING && v.elements) {
    v.owned.assign(v.elements, v.elements + v.count * scalar_size(v.element_type));
    v.elements = nullptr;
  }
  put(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                            std::vector<uint8_t> data) {
  tensors_.push_back({name, type, std::move(shape), std::move(data), {}});
}

void GgufWriter::add_tensor(const std::string& name, TensorType type, std::vector<uint64_t> shape, TensorProducer produce) {
  tensors_.push_back({name, type, std::move(shape), {}, std::move(produce)});
}

uint64_t GgufWriter::Tensor::bytes() const {
  if (!produce) return data.size();
  uint64_t rows = 1;
  for (size_t d = 1; d < shape.size(); ++d) rows *= shape[d];
  return shape.empty() ? 0 : uint64_t(row_bytes(type, size_t(shape[0]))) * rows;
}

namespace {
struct Out {
  std::vector<uint8_t> b;
  template <class T>
  void put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void pad(uint64_t align) { b.resize((b.size() + align - 1) / align * align, 0); }
};

void put_scalar(Out& o, const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::U8: case GgufValueType::BOOL: o.put<uint8_t>(uint8_t(v.u)); break;
    case GgufValueType::I8: o.put<int8_t>(int8_t(v.i)); break;
    case GgufValueType::U16: o.put<uint16_t>(uint16_t(v.u)); break;
    case GgufValueType::I16: o.put<int16_t>(int16_t(v.i)); break;
    case GgufValueType::U32: o.put<uint32_t>(uint32_t(v.u)); break;
    case GgufValueType::I32: o.put<int32_t>(int32_t(v.i)); break;
    case GgufValueType::U64: o.put<uint64_t>(v.u); break;
    case GgufValueType::I64: o.put<int64_t>(v.i); break;
    case GgufValueType::F32: o.put<float>(float(v.f)); break;
    case GgufValueType::F64: o.put<double>(v.f); break;
    case GgufValueType::STRING: o.str(v.str); break;
    default: break;
  }
}
}  // namespace

uint64_t GgufWriter::alignment() const {
  for (auto& kv : kv_)
    if (kv.first == "general.alignment" && kv.second.u) return kv.second.u;
  return 32;
}

std::vector<uint8_t> GgufWriter::header() const {
  Out o;
  const uint64_t align = alignment();
  o.put<uint32_t>(0x46554747u);
  o.put<uint32_t>(3);
  o.put<uint64_t>(tensors_.size());
  o.put<uint64_t>(kv_.size());
  for (auto& [key, v] : kv_) {
    o.str(key);
    o.put<uint32_t>(uint32_t(v.type));
    if (v.type == GgufValueType::ARRAY) {
      o.put<uint32_t>(uint32_t(v.element_type));
      o.put<uint64_t>(v.count);
      if (v.element_type == GgufValueType::STRING) {
        for (auto& s : v.strings) o.str(s);
      } else {
        const uint8_t* p = v.owned.empty() ? v.elements : v.owned.data();
        o.b.insert(o.b.end(), p, p + v.count * scalar_size(v.element_type));
      }
    } else {
      put_scalar(o, v);
    }
  }
  uint64_t offset = 0;
  for (auto& t : tensors_) {
    o.str(t.name);
    o.put<uint32_t>(uint32_t(t.shape.size()));
    for (uint64_t d : t.shape) o.put<uint64_t>(d);
    o.put<uint32_t>(uint32_t(t.type));
    o.put<uint64_t>(offset);
    offset = (offset + t.bytes() + align - 1) / align * align;
  }
  o.pad(align);
  return o.b;
}

Status GgufWriter::emit(const std::function<bool(const void*, size_t)>& put) const {
  const std::vector<uint8_t> head = header();
  if (!put(head.data(), head.size())) return Error{"write failed"};
  const uint64_t align = alignment();
  uint64_t at = head.size();
  std::vector<uint8_t> made;
  const std::vector<uint8_t> zeros(align, 0);
  for (auto& t : tensors_) {
    const std::vector<uint8_t>* data = &t.data;
    if (t.produce) {
      made.clear();
      if (Status s = t.produce(made); !s) return Error{"tensor '" + t.name + "': " + s.message()};
      if (made.size() != t.bytes())
        return Error{"tensor '" + t.name + "' came out " + std::to_string(made.size()) + " bytes, expected " +
                     std::to_string(t.bytes())};
      data = &made;
    }
    const uint64_t end = at + data->size(), pad = (end + align - 1) / align * align - end;
    if (!put(data->data(), data->size()) || !put(zeros.data(), pad)) return Error{"write failed"};
    at = end + pad;
  }
  return Status::Ok();
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  std::vector<uint8_t> b;
  (void)emit([&](const void* p, size_t n) {
    b.insert(b.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return true;
  });
  return b;
}

Status GgufWriter::write(const std::string& path) const {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto failed = [&](const std::string& why) {
    std::remove(tmp.c_str());
    return Error{path + ": " + why};
  };
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Error{path + ": cannot create: " + std::strerror(errno)};
    const Status s = emit([&](const void* p, size_t n) {
      f.write(static_cast<const char*>(p), std::streamsize(n));
      return bool(f);
    });
    if (!s) return failed(s.message());
    f.flush();
    if (!f) return failed("write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return failed(std::string("cannot rename: ") + std::strerror(errno));
  return Status::Ok();
}

}  // namespace tutti
