// GGUF weight files: a validating reader over a read-only mmap, and a writer.
//
// Reader invariants: once GgufFile::open() succeeds, every metadata value, tensor info and
// tensor byte range has been checked against the file size, so accessors never read outside
// the mapping. Values point into the mapping (zero copy) except strings, which are copied.
// A GgufFile is immutable after open() and may be read from any thread; it owns the mapping,
// so tensor data pointers live as long as the GgufFile.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/tensor_type.h"
#include "pipeline/expected.h"

namespace tutti {

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType t);

// One metadata value. Scalars are widened into `i`/`u`/`f`; arrays of numbers keep a pointer
// to their elements in the mapping (or in `owned` for values built by the writer).
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  GgufValueType element_type = GgufValueType::U8;  // for ARRAY
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string str;
  uint64_t count = 0;                   // ARRAY length
  const uint8_t* elements = nullptr;    // numeric ARRAY elements, little-endian
  std::vector<std::string> strings;     // STRING ARRAY elements
  std::vector<uint8_t> owned;           // backing store for writer-built numeric arrays

  bool is_integer() const;
  bool is_float() const { return type == GgufValueType::F32 || type == GgufValueType::F64; }
  // Numeric array element i widened to double / int64; requires a numeric ARRAY.
  double array_f64(uint64_t index) const;
  int64_t array_i64(uint64_t index) const;
  const uint8_t* array_data() const;  // numeric ARRAY elements, wherever they live
};

struct GgufTensorInfo {
  std::string name;
  TensorType type = TensorType::F32;
  uint32_t n_dims = 0;
  uint64_t ne[4] = {1, 1, 1, 1};  // ne[0] varies fastest
  uint64_t offset = 0;            // relative to the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping

  uint64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  std::string shape_string() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. Errors are one line naming the file and the problem.
  static Expected<std::shared_ptr<const GgufFile>> open(const std::string& path);
  // Validates an in-memory image (tests; the buffer must outlive the result).
  static Expected<std::shared_ptr<const GgufFile>> parse(const uint8_t* data, size_t size,
                                                         const std::string& name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }

  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;

  // Typed metadata look-ups: an Error names the key if it is present with the wrong type.
  Expected<std::optional<uint64_t>> get_uint(const std::string& key) const;
  Expected<std::optional<double>> get_float(const std::string& key) const;
  Expected<std::optional<std::string>> get_string(const std::string& key) const;
  Expected<std::optional<bool>> get_bool(const std::string& key) const;

 private:
  GgufFile() = default;
  Status parse_all();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Builds a GGUF v3 file. Tensors are copied into the writer; write() lays them out aligned.
class GgufWriter {
 public:
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void set_value(const std::string& key, const GgufValue& v);  // copies any reader value

  // `data` holds the tensor in its own type's layout (row_bytes(type, ne0) * rows bytes).
  void add_tensor(const std::string& name, TensorType type, std::vector<uint64_t> shape,
                  std::vector<uint8_t> data);
  // A tensor whose bytes are made while the file is written, one tensor at a time and in
  // order, so that writing never holds more than one of them (`tutti model quantize` over
  // files larger than memory). `produce` fills `out` with exactly the tensor's bytes.
  using TensorProducer = std::function<Status(std::vector<uint8_t>& out)>;
  void add_tensor(const std::string& name, TensorType type, std::vector<uint64_t> shape, TensorProducer produce);
  // Writes to a temporary file beside `path` and renames it into place when complete.
  Status write(const std::string& path) const;
  const std::vector<std::pair<std::string, GgufValue>>& entries() const { return kv_; }
  // The whole file in memory (tests); a producer that fails ends the bytes there.
  std::vector<uint8_t> to_bytes() const;

 private:
  struct Tensor {
    std::string name;
    TensorType type;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> data;
    TensorProducer produce;  // set for tensors made at write time
    uint64_t bytes() const;
  };
  std::vector<uint8_t> header() const;  // everything before the first tensor's data
  // Hands the file's bytes to `put` in order, each tensor made (if produced) and padded to
  // the alignment; stops at the first producer or `put` that fails.
  Status emit(const std::function<bool(const void*, size_t)>& put) const;
  uint64_t alignment() const;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
  void put(const std::string& key, GgufValue v);
};

}  // namespace tutti
