//! Configuration resources loaded from Kubernetes-style YAML.
