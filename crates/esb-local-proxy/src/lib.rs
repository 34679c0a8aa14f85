//! esb-local-proxy (skeleton; being built).
