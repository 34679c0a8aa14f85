//! esb-logstore (skeleton; being built).
