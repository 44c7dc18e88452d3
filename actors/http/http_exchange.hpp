// One HTTP request as an endpoint's handler sees it: what was asked (the request, its path's
// parameters, the client's key) and the ways to answer it (a whole response, or a stream of
// raw bytes for server-sent events and chunked audio). The HTTP session implements it and is
// left with routing and socket I/O; handlers (actors/http/handlers/) never see a socket.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/http/errors.hpp"
#include "actors/http/server_state.hpp"

namespace tutti::http {

class Generation;
class GenerationOwner;

class HttpExchange {
 public:
  using Request = bhttp::request<bhttp::string_body>;
  virtual ~HttpExchange() = default;

  virtual ServerState& server() = 0;
  virtual const Request& request() const = 0;
  virtual const std::string& key() const = 0;            // the key's name ("" when open)
  virtual bool admin() const = 0;                        // an admin key: sees every key's jobs
  // May this client see a job (or any stored object) that `owner` created? Another key's is
  // answered as if it did not exist.
  bool may_see(const std::string& owner) const { return admin() || owner == key(); }
  virtual const std::vector<std::string>& params() const = 0;  // the route's {id} segments
  const std::string& path() const { return path_; }
  // This request's id, sent back as x-request-id on every response (what a client quotes).
  const std::string& request_id() const { return request_id_; }
  const std::string& body() const { return request().body(); }

  // ---- a whole response (keeps the connection open when the client asked to)
  virtual void respond(bhttp::response<bhttp::string_body> res) = 0;
  void respond_json(int status, std::string body);
  void respond_bytes(const char* content_type, std::string body);
  // Counted in tutti_http_errors_total; 401 adds WWW-Authenticate, limits Retry-After.
  void respond_error(const ApiError& e);

  // ---- a streamed response: raw bytes in order, then the connection closes
  // Its head: 200, the content type, x-request-id, no caching, and `extra_headers` (each
  // ending in CRLF).
  std::string stream_head(const std::string& content_type, const std::string& extra_headers = "") const;
  virtual void stream(std::string data, int32_t tokens_through = -1) = 0;
  // A generated token with no bytes of its own (credit once what is queued is written).
  virtual void tokens_without_bytes(int32_t tokens) = 0;
  virtual void end_stream() = 0;  // close once what is queued is written
  // Abort a stream mid-way (the body ends without its last chunk: a failed transfer).
  virtual void abort_stream() = 0;

  // A handler whose answer outlives its call (it owns a generation) is kept with the
  // exchange until it has answered or the client has gone (then it is dropped, which
  // cancels and records its generation). `credit`: the generation its writes credit.
  virtual void keep(std::shared_ptr<GenerationOwner> handler, std::weak_ptr<Generation> credit) = 0;

  // Runs `work` on a media worker (decoding an upload: never on the I/O thread), then `then`
  // back on the I/O thread; the exchange stays alive meanwhile.
  virtual void off_thread(std::function<void()> work, std::function<void()> then) = 0;

  // The Realtime upgrade (checked and admitted by its handler): the connection, TLS or not,
  // leaves this session for a Realtime one (realtime/open.hpp) that answers the upgrade.
  virtual void become_realtime() = 0;

 protected:
  std::string path_;
  std::string request_id_;
  // The model that answers (the kept generation's), sent as x-tutti-served-by, and the
  // executor node it runs on (a cluster ingress's), sent as x-tutti-node.
  std::string served_by_, node_;
};

}  // namespace tutti::http
