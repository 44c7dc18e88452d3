#include "tools/loadtest/realtime_client.h"

#include <boost/asio.hpp>
#include <boost/beast.hpp>

#include <atomic>
#include <deque>
#include <thread>

namespace tutti::loadtest {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;

// Everything below the public interface runs on `thread` once connect() returns, except
// send() and close(), which only post to it. Owned by the RealtimeClient; outlives the thread.
struct RealtimeClient::Impl {
  net::io_context ioc;
  beast::websocket::stream<beast::tcp_stream> ws{ioc};
  beast::flat_buffer in;
  std::deque<std::string> outbox;  // the front one is being written
  std::atomic<bool> open{true};
  EventHandler on_event;
  std::function<void()> on_closed;
  std::thread thread;

  void read() {
    ws.async_read(in, [this](beast::error_code ec, size_t) {
      if (ec) return closed();
      const auto at = Clock::now();
      const nlohmann::json e = nlohmann::json::parse(beast::buffers_to_string(in.data()), nullptr, false);
      in.consume(in.size());
      if (!e.is_discarded()) on_event(e, at);
      read();
    });
  }
  void write_front() {
    ws.async_write(net::buffer(outbox.front()), [this](beast::error_code ec, size_t) {
      outbox.pop_front();
      if (ec) return closed();
      if (!outbox.empty()) write_front();
    });
  }
  void closed() {
    if (!open.exchange(false)) return;
    beast::error_code ignored;
    beast::get_lowest_layer(ws).socket().shutdown(tcp::socket::shutdown_both, ignored);
    if (on_closed) on_closed();
  }
};

RealtimeClient::RealtimeClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Expected<std::unique_ptr<RealtimeClient>> RealtimeClient::connect(const std::string& host, uint16_t port, const std::string& api_key,
                                                                  std::chrono::milliseconds timeout, EventHandler on_event,
                                                                  std::function<void()> on_closed) {
  auto impl = std::make_unique<Impl>();
  impl->on_event = std::move(on_event);
  impl->on_closed = std::move(on_closed);
  beast::error_code ec;
  const auto address = net::ip::make_address(host, ec);
  if (ec) return Error{"bad address " + host};
  auto& socket = beast::get_lowest_layer(impl->ws);
  socket.expires_after(timeout);
  socket.connect(tcp::endpoint(address, port), ec);
  if (ec) return Error{"connect: " + ec.message()};
  impl->ws.set_option(beast::websocket::stream_base::decorator([api_key](beast::websocket::request_type& r) {
    if (!api_key.empty()) r.set(beast::http::field::authorization, "Bearer " + api_key);
  }));
  beast::websocket::response_type response;
  impl->ws.handshake(response, host, "/v1/realtime", ec);
  if (ec) {
    // A server with no room for one more voice stream says so before the upgrade (429).
    const bool busy = response.result() == beast::http::status::too_many_requests;
    return Error{"handshake: " + ec.message() + " (HTTP " + std::to_string(response.result_int()) + ")",
                 busy ? ErrorCode::busy : ErrorCode::generation_failed};
  }
  socket.expires_never();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    raw->read();
    raw->ioc.run();
  });
  return std::unique_ptr<RealtimeClient>(new RealtimeClient(std::move(impl)));
}

bool RealtimeClient::send(const nlohmann::json& event) {
  if (!impl_->open) return false;
  net::post(impl_->ioc, [impl = impl_.get(), text = event.dump()]() mutable {
    if (!impl->open) return;
    impl->outbox.push_back(std::move(text));
    if (impl->outbox.size() == 1) impl->write_front();
  });
  return true;
}

void RealtimeClient::close() {
  if (!impl_->thread.joinable()) return;
  net::post(impl_->ioc, [impl = impl_.get()] { impl->closed(); });
  impl_->thread.join();
}

RealtimeClient::~RealtimeClient() { close(); }

}  // namespace tutti::loadtest
