#include "tools/loadtest/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace tutti::loadtest {

using json = nlohmann::json;

Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  p.count = int64_t(v.size());
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  // Nearest rank: the smallest value with at least q of the samples at or below it.
  auto rank = [&](double q) { return v[size_t(std::clamp(std::ceil(q * double(v.size())) - 1, 0.0, double(v.size() - 1)))]; };
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / double(v.size());
  p.p50 = rank(0.50), p.p90 = rank(0.90), p.p99 = rank(0.99), p.max = v.back();
  return p;
}

void Recorder::add(const std::string& metric, int stage, double at, double value) {
  std::lock_guard<std::mutex> lock(mu_);
  series_[metric].push_back({stage, at, value});
}

void Recorder::count(const std::string& name, int stage, int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_[name][stage] += n;
}

int Recorder::new_trace(const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  traces_.push_back({label, {}});
  return int(traces_.size()) - 1;
}

void Recorder::trace(int id, double at, double margin) {
  std::lock_guard<std::mutex> lock(mu_);
  if (id >= 0 && id < int(traces_.size())) traces_[size_t(id)].points.push_back({at, margin});
}

int64_t Recorder::total(const std::string& counter) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  if (auto it = counters_.find(counter); it != counters_.end())
    for (const auto& [stage, v] : it->second) n += v;
  return n;
}

namespace {
json to_json(const Percentiles& p) {
  return {{"count", p.count}, {"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"max", p.max}};
}
}  // namespace

// {"scenario", "elapsed_s", "stages": [{...load}],
//  "metrics": {name: {"all": percentiles, "by_stage": [percentiles]}},
//  "counters": {name: {"all": n, "by_stage": [n]}},
//  "throughput": {"text.tokens_per_s", "requests_per_s"},
//  "traces": [{"label", "points": [[t, margin]]}]}
json Recorder::to_json(const Scenario& sc, double elapsed) const {
  std::lock_guard<std::mutex> lock(mu_);
  json out;
  out["scenario"] = sc.name;
  out["target"] = sc.host + ":" + std::to_string(sc.port);
  out["elapsed_s"] = elapsed;
  json stages = json::array();
  for (const Stage& s : sc.stages)
    stages.push_back({{"duration_s", s.duration_s}, {"voice_sessions", s.voice_sessions}, {"stream_jobs", s.stream_jobs},
                      {"text_rate", s.text_rate}, {"speech_rate", s.speech_rate}, {"music_rate", s.music_rate},
                      {"image_rate", s.image_rate}, {"video_rate", s.video_rate}});
  out["stages"] = stages;
  const int n_stages = int(sc.stages.size());
  json metrics = json::object();
  for (const auto& [name, samples] : series_) {
    std::vector<double> all;
    std::vector<std::vector<double>> by(static_cast<size_t>(n_stages));
    for (const Sample& s : samples) {
      all.push_back(s.value);
      if (s.stage >= 0 && s.stage < n_stages) by[size_t(s.stage)].push_back(s.value);
    }
    json per = json::array();
    for (auto& v : by) per.push_back(loadtest::to_json(percentiles(v)));
    metrics[name] = {{"all", loadtest::to_json(percentiles(all))}, {"by_stage", per}};
  }
  out["metrics"] = metrics;
  json counters = json::object();
  for (const auto& [name, by_stage] : counters_) {
    int64_t all = 0;
    json per = json::array();
    for (int s = 0; s < n_stages; ++s) {
      const auto it = by_stage.find(s);
      const int64_t v = it == by_stage.end() ? 0 : it->second;
      per.push_back(v);
    }
    for (const auto& [stage, v] : by_stage) all += v;
    counters[name] = {{"all", all}, {"by_stage", per}};
  }
  out["counters"] = counters;
  auto counter = [&](const std::string& n) -> int64_t {
    auto it = counters_.find(n);
    int64_t v = 0;
    if (it != counters_.end())
      for (const auto& [s, x] : it->second) v += x;
    return v;
  };
  out["throughput"] = {{"text.tokens_per_s", elapsed > 0 ? double(counter("text.tokens")) / elapsed : 0},
                       {"requests_per_s", elapsed > 0 ? double(counter("text.requests") + counter("speech.requests") +
                                                               counter("music.requests") + counter("image.requests") +
                                                               counter("video.requests") + counter("voice.turns") +
                                                               counter("stream.turns")) / elapsed
                                                      : 0}};
  json traces = json::array();
  for (const auto& t : traces_) {
    json pts = json::array();
    for (const auto& [at, m] : t.points) pts.push_back({at, m});
    traces.push_back({{"label", t.label}, {"points", pts}});
  }
  out["traces"] = traces;
  return out;
}

namespace {

std::string fmt(double v, const std::string& name) {
  char b[64];
  if (name.size() > 2 && name.compare(name.size() - 2, 2, "_s") == 0) std::snprintf(b, sizeof b, "%.1f ms", v * 1e3);
  else std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

}  // namespace

std::string terminal_summary(const json& r) {
  std::ostringstream o;
  char line[256];
  o << "load test " << r.value("scenario", "") << " against " << r.value("target", "") << ", "
    << r.value("elapsed_s", 0.0) << " s\n";
  std::snprintf(line, sizeof line, "%-32s %7s %10s %10s %10s %10s\n", "metric", "count", "p50", "p90", "p99", "max");
  o << line;
  for (const auto& [name, m] : r["metrics"].items()) {
    const json& a = m["all"];
    std::snprintf(line, sizeof line, "%-32s %7lld %10s %10s %10s %10s\n", name.c_str(), (long long)a["count"].get<int64_t>(),
                  fmt(a["p50"], name).c_str(), fmt(a["p90"], name).c_str(), fmt(a["p99"], name).c_str(), fmt(a["max"], name).c_str());
    o << line;
  }
  o << "counts:";
  for (const auto& [name, c] : r["counters"].items()) o << "  " << name << " " << c["all"].get<int64_t>();
  o << "\nthroughput: " << r["throughput"]["text.tokens_per_s"].get<double>() << " text tokens/s, "
    << r["throughput"]["requests_per_s"].get<double>() << " requests/s\n";
  return o.str();
}

namespace {

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

// A line chart in SVG: series of (x, y) points, axes with their ranges.
std::string svg_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                      const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series) {
  const double W = 640, H = 300, L = 60, R = 150, T = 30, B = 40;
  double x0 = 1e300, x1 = -1e300, y0 = 0, y1 = -1e300;
  for (const auto& [name, pts] : series)
    for (const auto& [x, y] : pts) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x0 > x1) x0 = 0, x1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "'>"
    << "<text x='" << L << "' y='18' font-weight='bold'>" << escape(title) << "</text>"
    << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='#333'/>"
    << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='#333'/>"
    << "<text x='" << (W - R + L) / 2 << "' y='" << H - 8 << "' text-anchor='middle'>" << escape(x_label) << "</text>"
    << "<text x='12' y='" << (H - B + T) / 2 << "' transform='rotate(-90 12 " << (H - B + T) / 2 << ")' text-anchor='middle'>"
    << escape(y_label) << "</text>";
  for (int k = 0; k <= 4; ++k) {
    const double yv = y0 + (y1 - y0) * k / 4, xv = x0 + (x1 - x0) * k / 4;
    char b[32];
    std::snprintf(b, sizeof b, "%.3g", yv);
    o << "<text x='" << L - 4 << "' y='" << py(yv) + 4 << "' text-anchor='end' font-size='11'>" << b << "</text>";
    o << "<line x1='" << L << "' y1='" << py(yv) << "' x2='" << W - R << "' y2='" << py(yv) << "' stroke='#eee'/>";
    std::snprintf(b, sizeof b, "%.3g", xv);
    o << "<text x='" << px(xv) << "' y='" << H - B + 14 << "' text-anchor='middle' font-size='11'>" << b << "</text>";
  }
  if (y0 < 0) o << "<line x1='" << L << "' y1='" << py(0) << "' x2='" << W - R << "' y2='" << py(0) << "' stroke='#999' stroke-dasharray='4'/>";
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& [name, pts] = series[i];
    const char* c = colors[i % 8];
    std::ostringstream path;
    for (const auto& [x, y] : pts) path << (path.tellp() == 0 ? "M" : " L") << px(x) << " " << py(y);
    o << "<path d='" << path.str() << "' fill='none' stroke='" << c << "' stroke-width='1.8'/>";
    for (const auto& [x, y] : pts)
      if (pts.size() <= 40) o << "<circle cx='" << px(x) << "' cy='" << py(y) << "' r='2.5' fill='" << c << "'/>";
    o << "<text x='" << W - R + 8 << "' y='" << T + 14 * (i + 1) << "' fill='" << c << "' font-size='12'>" << escape(name) << "</text>";
  }
  o << "</svg>";
  return o.str();
}

}  // namespace

std::string html_report(const json& r) {
  std::ostringstream o;
  o << "<!doctype html><html><head><meta charset='utf-8'><title>tutti load test: " << escape(r.value("scenario", ""))
    << "</title><style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}"
       "</style></head><body>";
  o << "<h1>tutti load test</h1><p>Scenario <b>" << escape(r.value("scenario", "")) << "</b> against <b>"
    << escape(r.value("target", "")) << "</b>, " << r.value("elapsed_s", 0.0) << " s.</p>";
  // Stages (the load) and the summary table.
  // (Reports written before a field existed lack it: 0.)
  o << "<h2>Load</h2><table><tr><th>stage</th><th>seconds</th><th>voice sessions</th><th>stream jobs</th><th>text/s</th>"
       "<th>speech/s</th><th>music/s</th><th>images/s</th><th>videos/s</th></tr>";
  int i = 0;
  for (const json& s : r["stages"]) {
    o << "<tr><td>" << i++ << "</td><td>" << s["duration_s"] << "</td>";
    for (const char* k : {"voice_sessions", "stream_jobs", "text_rate", "speech_rate", "music_rate", "image_rate", "video_rate"})
      o << "<td>" << s.value(k, json(0)) << "</td>";
    o << "</tr>";
  }
  o << "</table><h2>Latencies</h2><table><tr><th>metric</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>";
  for (const auto& [name, m] : r["metrics"].items()) {
    const json& a = m["all"];
    o << "<tr><td>" << escape(name) << "</td><td>" << a["count"] << "</td><td>" << fmt(a["p50"], name) << "</td><td>"
      << fmt(a["p90"], name) << "</td><td>" << fmt(a["p99"], name) << "</td><td>" << fmt(a["max"], name) << "</td></tr>";
  }
  o << "</table><h2>Counts</h2><table><tr><th>counter</th><th>total</th></tr>";
  for (const auto& [name, c] : r["counters"].items()) o << "<tr><td>" << escape(name) << "</td><td>" << c["all"] << "</td></tr>";
  o << "</table>";
  // Latency percentiles against load: x = the stage's offered load (voice sessions and
  // stream jobs plus requests per second), one line per percentile and metric.
  std::vector<double> load;
  for (const json& s : r["stages"]) {
    double l = 0;
    for (const char* k : {"voice_sessions", "stream_jobs", "text_rate", "speech_rate", "music_rate", "image_rate", "video_rate"})
      l += s.value(k, 0.0);
    load.push_back(l);
  }
  o << "<h2>Latency against load</h2>";
  for (const char* metric : {"text.ttft_s", "text.itl_s", "voice.speech_end_to_audio_s", "voice.commit_to_audio_s",
                             "stream.speech_end_to_first_byte_s", "speech.ttfb_s", "music.ttfb_s", "video.latency_s"}) {
    if (!r["metrics"].contains(metric)) continue;
    std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series;
    for (const char* q : {"p50", "p90", "p99"}) {
      std::vector<std::pair<double, double>> pts;
      const json& by = r["metrics"][metric]["by_stage"];
      for (size_t s = 0; s < by.size() && s < load.size(); ++s)
        if (by[s]["count"].get<int64_t>() > 0) pts.push_back({load[s], by[s][q].get<double>() * 1e3});
      series.push_back({q, pts});
    }
    o << "<p>" << svg_chart(std::string(metric) + " by stage", "offered load (sessions + jobs + requests/s)", "ms", series) << "</p>";
  }
  if (!r["traces"].empty()) {
    std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series;
    for (const json& t : r["traces"]) {
      std::vector<std::pair<double, double>> pts;
      for (const json& p : t["points"]) pts.push_back({p[0].get<double>(), p[1].get<double>() * 1e3});
      series.push_back({t["label"].get<std::string>(), pts});
    }
    o << "<h2>Real-time margin per voice stream</h2><p>Audio received ahead of playback while an answer plays (below zero: "
         "the listener hears a gap).</p><p>"
      << svg_chart("margin over time", "seconds since start", "ms of audio ahead", series) << "</p>";
  }
  o << "</body></html>\n";
  return o.str();
}

json compare_reports(const json& a, const json& b) {
  json out = {{"a", a.value("scenario", "")}, {"b", b.value("scenario", "")}, {"metrics", json::object()}, {"counters", json::object()}};
  for (const auto& [name, m] : a["metrics"].items()) {
    if (!b["metrics"].contains(name)) continue;
    json row;
    for (const char* q : {"p50", "p90", "p99", "max"}) {
      const double x = m["all"][q].get<double>(), y = b["metrics"][name]["all"][q].get<double>();
      row[q] = {{"a", x}, {"b", y}, {"ratio", x > 0 ? y / x : (y > 0 ? -1.0 : 1.0)}};
    }
    out["metrics"][name] = row;
  }
  for (const auto& [name, c] : a["counters"].items()) {
    if (!b["counters"].contains(name)) continue;
    const double x = double(c["all"].get<int64_t>()), y = double(b["counters"][name]["all"].get<int64_t>());
    out["counters"][name] = {{"a", x}, {"b", y}, {"ratio", x > 0 ? y / x : (y > 0 ? -1.0 : 1.0)}};
  }
  return out;
}

std::string compare_table(const json& c) {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line, "%-32s %5s %12s %12s %8s\n", "metric", "", "a", "b", "b/a");
  o << line;
  for (const auto& [name, row] : c["metrics"].items())
    for (const char* q : {"p50", "p99"}) {
      const json& v = row[q];
      std::snprintf(line, sizeof line, "%-32s %5s %12s %12s %8.2f\n", name.c_str(), q, fmt(v["a"], name).c_str(), fmt(v["b"], name).c_str(),
                    v["ratio"].get<double>());
      o << line;
    }
  for (const auto& [name, v] : c["counters"].items()) {
    std::snprintf(line, sizeof line, "%-32s %5s %12.0f %12.0f %8.2f\n", name.c_str(), "", v["a"].get<double>(), v["b"].get<double>(),
                  v["ratio"].get<double>());
    o << line;
  }
  return o.str();
}

}  // namespace tutti::loadtest
