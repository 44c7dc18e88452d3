#include "actors/http/stream_address.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cstring>

namespace tutti::http {

namespace {

bool to_bytes(const std::string& text, HostRange& r) {
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
    std::memcpy(r.bytes.data(), &v4, 4);
    r.v6 = false;
    return true;
  }
  if (inet_pton(AF_INET6, text.c_str(), &v6) == 1) {
    std::memcpy(r.bytes.data(), &v6, 16);
    r.v6 = true;
    return true;
  }
  return false;
}

bool in_range(const HostRange& range, const HostRange& a) {
  if (range.v6 != a.v6) return false;
  for (int bit = 0; bit < range.prefix; ++bit) {
    const int byte = bit / 8, mask = 0x80 >> (bit % 8);
    if ((range.bytes[size_t(byte)] & mask) != (a.bytes[size_t(byte)] & mask)) return false;
  }
  return true;
}

}  // namespace

Expected<std::vector<HostRange>> parse_host_ranges(const std::vector<std::string>& entries) {
  std::vector<HostRange> out;
  for (const std::string& e : entries) {
    const size_t slash = e.find('/');
    HostRange r;
    if (!to_bytes(e.substr(0, slash), r)) return Error{"'" + e + "' is not an address or a CIDR range"};
    const int max = r.v6 ? 128 : 32;
    r.prefix = max;
    if (slash != std::string::npos) {
      const std::string p = e.substr(slash + 1);
      if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string::npos || std::stoi(p) > max)
        return Error{"'" + e + "' has no valid prefix length"};
      r.prefix = std::stoi(p);
    }
    out.push_back(r);
  }
  return out;
}

bool host_allowed(const std::vector<HostRange>& allowed, const std::string& numeric_address) {
  HostRange a;
  if (!to_bytes(numeric_address, a)) return false;
  for (const HostRange& r : allowed)
    if (in_range(r, a)) return true;
  return false;
}

Expected<StreamAddress> resolve_stream_address(const std::string& url, const std::vector<HostRange>& allowed) {
  const std::string prefix = "zmq:tcp://";
  if (url.rfind(prefix, 0) != 0) return Error{"must be a zmq:tcp://HOST:PORT URL"};
  const std::string rest = url.substr(prefix.size());
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size()) return Error{"must be a zmq:tcp://HOST:PORT URL"};
  std::string host = rest.substr(0, colon);
  const std::string port_text = rest.substr(colon + 1);
  if (port_text.size() > 9 || port_text.find_first_not_of("0123456789") != std::string::npos) return Error{"the port must be a number from 1 to 65535"};
  const long port = std::stol(port_text);
  if (port < 1 || port > 65535) return Error{"the port must be a number from 1 to 65535"};
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "*") return Error{"the host must be an address or a name, not a wildcard"};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || !found) return Error{"the host '" + host + "' does not resolve"};
  StreamAddress a;
  std::string refused;
  for (addrinfo* ai = found; ai; ai = ai->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* where = ai->ai_family == AF_INET ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
                                                 : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    if (!inet_ntop(ai->ai_family, where, text, sizeof text)) continue;
    if (!host_allowed(allowed, text)) {
      refused = text;
      break;
    }
    if (a.address.empty()) a.address = text, a.v6 = ai->ai_family == AF_INET6;
  }
  freeaddrinfo(found);
  if (!refused.empty() || a.address.empty())
    return Error{"the host '" + host + "' (" + refused + ") is not one stream jobs may use ([streams] allowed_hosts)"};
  a.port = uint16_t(port);
  a.endpoint = "tcp://" + (a.v6 ? "[" + a.address + "]" : a.address) + ":" + std::to_string(port);
  return a;
}

}  // namespace tutti::http
