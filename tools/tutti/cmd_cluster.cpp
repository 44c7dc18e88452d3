// tutti cluster status: a cluster ingress's executor nodes, their models, load and health,
// from its GET /v1/admin/cluster (an admin key where keys are configured).
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "tools/tutti/args.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using json = nlohmann::json;

// http://HOST[:PORT][/...]: the ingress's plain HTTP port.
std::optional<HostPort> parse_url(std::string s) {
  if (s.rfind("http://", 0) == 0) s = s.substr(7);
  else if (s.find("://") != std::string::npos) return std::nullopt;
  return parse_host_port(s.substr(0, s.find('/')), 80);
}

Expected<json> fetch_status(const HostPort& u, const std::string& key) {
  try {
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::resolver resolver(ioc);
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(resolver.resolve(u.host, std::to_string(u.port)));
    bhttp::request<bhttp::empty_body> req{bhttp::verb::get, "/v1/admin/cluster", 11};
    req.set(bhttp::field::host, u.host);
    if (!key.empty()) req.set(bhttp::field::authorization, "Bearer " + key);
    bhttp::write(stream, req);
    beast::flat_buffer buf;
    bhttp::response<bhttp::string_body> res;
    bhttp::read(stream, buf, res);
    json body = json::parse(res.body(), nullptr, false);
    if (res.result_int() != 200) {
      const std::string why = body.is_object() && body.contains("error") ? body["error"].value("message", "") : res.body();
      return Error{"the server answered " + std::to_string(res.result_int()) + ": " + why};
    }
    if (!body.is_object()) return Error{"the server's answer is not JSON"};
    return body;
  } catch (const std::exception& e) {
    return Error{"cannot reach " + u.host + ":" + std::to_string(u.port) + ": " + e.what()};
  }
}

void print_status(const json& s) {
  std::printf("cluster ingress: cluster port %d, heartbeat %.1f s, %zu node(s)\n", s.value("port", 0), s.value("heartbeat_s", 0.0),
              s["nodes"].size());
  std::printf("%-20s %-9s %-28s %7s %7s %13s %8s %7s %7s %9s\n", "NODE", "STATE", "MODELS", "WAITING", "RUNNING", "KV FREE", "STEP ms",
              "LOAD", "ROUTED", "LAST BEAT");
  for (const json& n : s["nodes"]) {
    std::string models;
    for (const json& m : n["models"]) {
      models += (models.empty() ? "" : ",") + m.value("name", "") + " v" + std::to_string(m.value("version", 0));
      for (const json& d : m["degraded"]) models += " (" + d.value("modality", "") + " degraded)";
    }
    const json& l = n["load"];
    const std::string kv = std::to_string(l.value("free_kv_blocks", 0)) + "/" + std::to_string(l.value("total_kv_blocks", 0));
    std::printf("%-20s %-9s %-28s %7d %7d %13s %8.2f %7.2f %7llu %7.1f s\n", n.value("name", "").c_str(), n.value("state", "").c_str(),
                models.c_str(), l.value("waiting", 0), l.value("running", 0), kv.c_str(), 1000 * l.value("step_seconds", 0.0),
                l.value("score", 0.0), static_cast<unsigned long long>(n.value("requests_routed", 0ull)), n.value("last_beat_s_ago", 0.0));
    if (const std::string url = n.value("url", ""); !url.empty()) std::printf("%-20s metrics: %s/metrics\n", "", url.c_str());
  }
  const json& r = s["routing"];
  std::printf("routing: affinity %d, imbalance overrides %d, least loaded %d, sessions placed %d (sticky turns %d, moved %d), no node %d\n",
              r.value("affinity", 0), r.value("imbalance_overrides", 0), r.value("least_loaded", 0), r.value("sessions_placed", 0),
              r.value("sticky", 0), r.value("sessions_moved", 0), r.value("no_node", 0));
  const json& lost = s["lost"];
  std::printf("joins %d, rejoins %d, refused %d; nodes lost: connection %d, silent %d, left %d\n", s.value("joins", 0), s.value("rejoins", 0),
              s.value("refused", 0), lost.value("connection", 0), lost.value("silent", 0), lost.value("left", 0));
}

}  // namespace

int cmd_cluster(const std::vector<std::string>& argv) {
  Args args(argv, {"url", "api-key"}, {"json"});
  if (!args.ok()) return fail(args.error());
  if (args.positional().size() != 1 || args.positional()[0] != "status") return fail("usage: tutti cluster status [--url URL] [--api-key KEY] [--json]");
  auto url = parse_url(args.get("url", "http://127.0.0.1:8080"));
  if (!url) return fail("--url must be http://HOST:PORT (the ingress's plain port)");
  auto status = fetch_status(*url, args.get("api-key", ""));
  if (!status) return fail(status.error().message);
  if (args.has("json")) std::printf("%s\n", status->dump(2).c_str());
  else print_status(*status);
  return 0;
}

}  // namespace tutti::cli
