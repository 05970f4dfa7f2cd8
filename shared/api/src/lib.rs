//! Generated protobuf types and gRPC services.
