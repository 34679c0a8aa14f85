//! esb-runtime-node (skeleton; being built).
