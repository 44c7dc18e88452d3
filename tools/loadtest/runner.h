// Runs a scenario: its stages one after another (voice sessions started or told to finish to
// match each stage's count; text, speech and image requests arriving as Poisson processes at
// each stage's rates), bounded by the stages' total time and max_requests, then in-flight
// work gets drain_s to finish. Returns the report JSON (report.h).
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "tools/loadtest/scenario.h"

namespace tutti::loadtest {

// `progress` (optional) receives a one-line status about once a second.
Expected<nlohmann::json> run_scenario(const Scenario& scenario, const std::function<void(const std::string&)>& progress = nullptr);

}  // namespace tutti::loadtest
