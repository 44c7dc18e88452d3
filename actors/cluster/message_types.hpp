// Every message type that crosses nodes: CAF 0.17 delivers a type no node has registered as
// an empty message, so the ingress and the executor nodes both register this block
// (add_cluster_message_types) before their actor system starts. The payloads are the
// pipeline's own (actors/actors.hpp); atoms and CAF's built-in types (integers, strings,
// caf::actor) need no registration, nor do the types only nested inside another.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <vector>

#include "actors/actors.hpp"

CAF_BEGIN_TYPE_ID_BLOCK(tutti_cluster, caf::first_custom_type_id)
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::text_request))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::step_events))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::text_delta))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::media_delta))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::encode_result))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::Modality))
  CAF_ADD_TYPE_ID(tutti_cluster, (std::vector<int32_t>))
  CAF_ADD_TYPE_ID(tutti_cluster, (std::vector<uint8_t>))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::sink_actor))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::node_hello))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::actors::join_reply))
  CAF_ADD_TYPE_ID(tutti_cluster, (tutti::cluster::NodeLoad))
CAF_END_TYPE_ID_BLOCK(tutti_cluster)

namespace tutti::cluster {

// Registers the block with a node's configuration (before its actor_system is made).
inline void add_cluster_message_types(caf::actor_system_config& cfg) { cfg.add_message_types<caf::id_block::tutti_cluster>(); }

}  // namespace tutti::cluster
