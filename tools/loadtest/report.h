// What a load-test run measured, and the forms people read: a JSON file (the record, and what
// runs are compared from), a terminal summary, and an HTML report with SVG plots (latency
// percentiles per stage against the stage's load; each voice stream's real-time margin over
// time). Plain data and functions; the Recorder is the one thread-safe piece (clients on many
// threads add to it).
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "tools/loadtest/scenario.h"

namespace tutti::loadtest {

struct Sample {
  int stage = 0;
  double at = 0;  // seconds since the run started
  double value = 0;
};

struct Percentiles {
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Percentiles percentiles(std::vector<double> values);

class Recorder {
 public:
  // A latency or ratio sample of `metric` (e.g. "text.ttft_s").
  void add(const std::string& metric, int stage, double at, double value);
  // A count (requests, tokens, errors by kind: "errors.text.http_429").
  void count(const std::string& name, int stage, int64_t n = 1);
  // A voice stream's real-time margin over time (seconds of audio it has ahead of playback).
  int new_trace(const std::string& label);
  void trace(int id, double at, double margin);
  int64_t total(const std::string& counter) const;
  // Everything as the report's JSON (see report.cpp for the shape).
  nlohmann::json to_json(const Scenario& scenario, double elapsed_s) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::vector<Sample>> series_;
  std::map<std::string, std::map<int, int64_t>> counters_;
  struct Trace {
    std::string label;
    std::vector<std::pair<double, double>> points;
  };
  std::vector<Trace> traces_;
};

std::string terminal_summary(const nlohmann::json& report);
std::string html_report(const nlohmann::json& report);
// Two runs side by side: for every metric and counter both have, b / a (a ratio above 1 is
// slower or more for latencies and errors; -1 where a is 0 and b is not); printed as a table,
// returned as JSON.
nlohmann::json compare_reports(const nlohmann::json& a, const nlohmann::json& b);
std::string compare_table(const nlohmann::json& comparison);

}  // namespace tutti::loadtest
