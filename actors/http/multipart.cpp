#include "actors/http/multipart.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace tutti::http {

using json = nlohmann::json;

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// A parameter of a header value (`name="x"` or `name=x`), unquoted; nullopt when absent.
std::optional<std::string> header_param(std::string_view value, std::string_view param) {
  size_t at = 0;
  while ((at = value.find(';', at)) != std::string_view::npos) {
    std::string_view rest = trim(value.substr(at + 1));
    const size_t eq = rest.find('=');
    if (eq != std::string_view::npos && lower(trim(rest.substr(0, eq))) == param) {
      std::string_view v = trim(rest.substr(eq + 1));
      if (!v.empty() && v.front() == '"') {
        std::string out;
        for (size_t i = 1; i < v.size() && v[i] != '"'; ++i) {
          if (v[i] == '\\' && i + 1 < v.size()) ++i;
          out += v[i];
        }
        return out;
      }
      return std::string(v.substr(0, v.find(';')));
    }
    ++at;
  }
  return std::nullopt;
}

ApiError bad(std::string message, std::string part = "") { return invalid_request("malformed multipart body: " + std::move(message), std::move(part)); }

json field_value(const std::string& name, const std::string& v, const std::vector<std::string>& keep_strings) {
  if (std::find(keep_strings.begin(), keep_strings.end(), name) != keep_strings.end()) return v;
  if (v == "true") return true;
  if (v == "false") return false;
  if (!v.empty() && v.size() < 32) {
    char* end = nullptr;
    const long long i = std::strtoll(v.c_str(), &end, 10);
    if (end && *end == '\0') return i;
    const double d = std::strtod(v.c_str(), &end);
    if (end && *end == '\0') return d;
  }
  return v;
}

}  // namespace

const FormPart* Form::find(std::string_view name) const {
  for (const FormPart& p : parts)
    if (p.name == name) return &p;
  return nullptr;
}

nlohmann::json Form::fields_json(const std::vector<std::string>& keep_strings) const {
  nlohmann::json j = nlohmann::json::object();
  for (const FormPart& p : parts) {
    if (p.filename) continue;
    if (p.name.size() > 2 && p.name.ends_with("[]")) {
      const std::string name = p.name.substr(0, p.name.size() - 2);
      if (!j[name].is_array()) j[name] = nlohmann::json::array();
      j[name].push_back(field_value(name, p.data, keep_strings));
    } else {
      j[p.name] = field_value(p.name, p.data, keep_strings);
    }
  }
  return j;
}

std::optional<std::string> multipart_boundary(std::string_view content_type) {
  if (lower(trim(content_type.substr(0, content_type.find(';')))) != "multipart/form-data") return std::nullopt;
  auto b = header_param(content_type, "boundary");
  if (!b || b->empty() || b->size() > 70) return std::nullopt;
  return b;
}

std::variant<Form, ApiError> parse_multipart(std::string_view body, std::string_view boundary) {
  const std::string delimiter = "--" + std::string(boundary);
  Form form;
  size_t at = body.find(delimiter);
  if (at == std::string_view::npos) return bad("no boundary '" + std::string(boundary) + "' in the body");
  at += delimiter.size();
  for (;;) {
    if (body.substr(at, 2) == "--") break;  // the closing delimiter
    if (body.substr(at, 2) != "\r\n") return bad("a boundary must end its line");
    at += 2;
    if (form.parts.size() >= kMaxFormParts) return bad("more than " + std::to_string(kMaxFormParts) + " parts");
    const size_t head_end = body.find("\r\n\r\n", at);
    if (head_end == std::string_view::npos || head_end - at > 8192)
      return bad("part " + std::to_string(form.parts.size() + 1) + " has no end to its headers");
    FormPart part;
    bool disposition = false;
    std::string_view head = body.substr(at, head_end - at);
    while (!head.empty()) {
      const size_t eol = head.find("\r\n");
      const std::string_view line = head.substr(0, eol);
      head = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      const std::string name = lower(trim(line.substr(0, colon)));
      const std::string_view value = trim(line.substr(colon + 1));
      if (name == "content-disposition") {
        if (lower(trim(value.substr(0, value.find(';')))) != "form-data") return bad("a part's Content-Disposition must be form-data");
        auto n = header_param(value, "name");
        if (!n || n->empty()) return bad("part " + std::to_string(form.parts.size() + 1) + " has no name");
        part.name = *n;
        part.filename = header_param(value, "filename");
        disposition = true;
      } else if (name == "content-type") {
        part.content_type = std::string(value);
      }
    }
    if (!disposition) return bad("part " + std::to_string(form.parts.size() + 1) + " has no Content-Disposition");
    const size_t data_at = head_end + 4;
    const size_t next = body.find("\r\n" + delimiter, data_at);
    if (next == std::string_view::npos) return bad("part '" + part.name + "' is cut short (no closing boundary)", part.name);
    part.data = std::string(body.substr(data_at, next - data_at));
    form.parts.push_back(std::move(part));
    at = next + 2 + delimiter.size();
  }
  return form;
}

}  // namespace tutti::http
