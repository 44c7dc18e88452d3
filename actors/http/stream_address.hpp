// Where a stream job may connect and bind, as plain functions: its zmq:tcp://HOST:PORT
// addresses are resolved and must fall inside the allowed host ranges (`[streams]
// allowed_hosts`, loopback by default), so a client cannot make the server connect out to
// another host or listen on every interface. Tested without sockets.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "pipeline/expected.h"

namespace tutti::http {

// One allowed range: an address and its prefix length (a plain address: all its bits).
struct HostRange {
  std::array<uint8_t, 16> bytes{};  // IPv4 in the first 4
  int prefix = 0;
  bool v6 = false;
};
// "127.0.0.0/8", "::1", "10.0.0.5", "fd00::/8"; an Error naming the entry otherwise.
Expected<std::vector<HostRange>> parse_host_ranges(const std::vector<std::string>& entries);
bool host_allowed(const std::vector<HostRange>& allowed, const std::string& numeric_address);

struct StreamAddress {
  std::string address;   // numeric, as resolved
  uint16_t port = 0;
  bool v6 = false;
  std::string endpoint;  // for ZeroMQ: tcp://ADDRESS:PORT (tcp://[ADDRESS]:PORT for IPv6)
  bool operator==(const StreamAddress& o) const { return address == o.address && port == o.port; }
};
// "zmq:tcp://HOST:PORT": the port a number from 1 to 65535 (leading zeros are the same
// number), the host a name or address whose every resolved address is allowed. Wildcards
// (*, 0.0.0.0, ::) and interface names are never addresses.
Expected<StreamAddress> resolve_stream_address(const std::string& url, const std::vector<HostRange>& allowed);

}  // namespace tutti::http
