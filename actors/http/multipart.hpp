// multipart/form-data (RFC 7578) as plain data: what the official SDKs send to the upload
// endpoints (transcriptions, translations, image edits, videos). Bounded: the body itself by
// [server] max_upload_bytes (the session), the parts here by count and header size. A
// malformed body is an invalid_request naming the part. No sockets: tested directly.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "actors/http/errors.hpp"

namespace tutti::http {

struct FormPart {
  std::string name;
  std::optional<std::string> filename;  // a file part
  std::string content_type;             // "" when the part names none
  std::string data;
};

struct Form {
  std::vector<FormPart> parts;
  const FormPart* find(std::string_view name) const;  // the first part of that name
  // The text fields as a JSON object, as the endpoints' JSON bodies have them: integers and
  // numbers become numbers, true and false booleans, the rest strings (except `keep_strings`,
  // which stay strings: a prompt of "42" is text); array fields (name[]) become arrays. File
  // parts are left out.
  nlohmann::json fields_json(const std::vector<std::string>& keep_strings = {"prompt", "input", "instructions", "language"}) const;
};

inline constexpr size_t kMaxFormParts = 64;

// The boundary of a multipart/form-data Content-Type; nullopt when it is not one.
std::optional<std::string> multipart_boundary(std::string_view content_type);
std::variant<Form, ApiError> parse_multipart(std::string_view body, std::string_view boundary);

}  // namespace tutti::http
